"""Positive-pair candidates and batch samplers of ECG-only contrastive learning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from cardiomm.training.positive_pairs import (
    STRATEGIES,
    AttributeNeighbours,
    GroupCandidates,
    PositivePairBatchSampler,
    check_disjoint_patients,
    group_ids,
    neighbour_index_cost,
    standardise,
    wave_attributes,
)
from cardiomm.training.sampling import KeyedBatchSampler


def _random_attributes(n: int = 600, dims: int = 3, seed: int = 0, nan_rows: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, dims))
    rows = rng.choice(n, nan_rows, replace=False)
    values[rows, rng.integers(0, dims, nan_rows)] = np.nan
    return values


def _brute_force_candidates(values: np.ndarray, threshold: float, max_neighbours: int) -> list[list[int]]:
    valid = np.isfinite(values).all(axis=1)
    out = []
    for i in range(len(values)):
        if not valid[i]:
            out.append([])
            continue
        distance = np.linalg.norm(np.where(valid[:, None], values, 0.0) - values[i], axis=1)
        distance[~valid] = np.inf
        distance[i] = np.inf
        nearest = np.argsort(distance, kind="stable")[:max_neighbours]
        out.append([int(j) for j in nearest if distance[j] <= threshold])
    return out


def _pairs(batches: list[list[int]]) -> list[tuple[int, int]]:
    return [(b[k], b[k + 1]) for b in batches for k in range(0, len(b), 2)]


# ----------------------------------------------------------------------------------------------- candidates


def test_attribute_neighbours_match_brute_force_and_partners_are_within_threshold(monkeypatch):
    import cardiomm.training.positive_pairs as positive_pairs

    monkeypatch.setattr(positive_pairs, "_QUERY_CHUNK", 64)  # many query tasks, answered out of row order
    values = _random_attributes()
    neighbours = AttributeNeighbours(values, threshold=0.6, max_neighbours=4, num_threads=2)
    expected = _brute_force_candidates(values, 0.6, 4)
    assert [neighbours.candidates(i).tolist() for i in range(len(values))] == expected
    assert neighbours.indices.dtype == np.int32 and neighbours.indptr[-1] == len(neighbours.indices)

    without = sum(1 for c in expected if not c)
    assert neighbours.num_without_partner == without and neighbours.num_missing == 30
    sampler = PositivePairBatchSampler(neighbours, batch_size=16, seed=1)
    nan_rows = set(np.flatnonzero(~np.isfinite(values).all(axis=1)).tolist())
    for anchor, partner in _pairs(sampler.batches()):
        assert partner in expected[anchor] and partner != anchor
        assert np.linalg.norm(values[anchor] - values[partner]) <= 0.6
        assert anchor not in nan_rows and partner not in nan_rows


def test_attribute_neighbours_exclude_the_row_itself_among_duplicates():
    values = np.zeros((5, 2))
    values[4] = 10.0  # far from the others: no partner
    neighbours = AttributeNeighbours(values, threshold=0.5, max_neighbours=2)
    for i in range(4):
        found = neighbours.candidates(i)
        assert len(found) == 2 and i not in found and set(found.tolist()) <= {0, 1, 2, 3}
    assert neighbours.candidates(4).size == 0 and neighbours.anchors.tolist() == [0, 1, 2, 3]


def test_attribute_neighbours_reject_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        AttributeNeighbours(np.zeros((4, 2)), threshold=-1.0)
    with pytest.raises(ValueError, match="max_neighbours"):
        AttributeNeighbours(np.zeros((4, 2)), threshold=1.0, max_neighbours=0)
    with pytest.raises(ValueError, match="2-D"):
        AttributeNeighbours(np.zeros(4), threshold=1.0)


def test_group_candidates_pair_only_members_of_one_group():
    ids = ["a", "b", "a", None, "c", "c", "c", float("nan"), ("x", 1), ("x", 1)]
    groups = GroupCandidates(ids)
    assert groups.codes[3] == -1 and groups.codes[7] == -1 and groups.codes[8] == groups.codes[9] >= 0
    assert groups.anchors.tolist() == [0, 2, 4, 5, 6, 8, 9]
    assert groups.num_without_partner == 3 and groups.num_missing == 2
    assert sorted(groups.candidates(5).tolist()) == [4, 6] and groups.candidates(1).size == 0

    sampler = PositivePairBatchSampler(groups, batch_size=4, drop_last=False)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for anchor, partner in _pairs(sampler.batches()):
            assert partner != anchor and ids[partner] == ids[anchor]


def test_partners_are_drawn_uniformly_from_the_candidates():
    groups = GroupCandidates([0, 0, 0, 0, 1, 1])
    sampler = PositivePairBatchSampler(groups, batch_size=12, drop_last=False)
    drawn: Counter = Counter()
    for epoch in range(600):
        sampler.set_epoch(epoch)
        drawn.update(p for a, p in _pairs(sampler.batches()) if a == 0)
    assert set(drawn) == {1, 2, 3}
    assert all(abs(count / 600 - 1 / 3) < 0.07 for count in drawn.values()), drawn


# ------------------------------------------------------------------------------------------------ sampler


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [8, 9, 64])
def test_every_anchor_once_per_epoch_and_len_matches(drop_last, batch_size):
    groups = GroupCandidates(np.repeat(np.arange(50), [1, 2, 3, 4, 5] * 10))
    sampler = PositivePairBatchSampler(groups, batch_size=batch_size, seed=7, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    anchors = [a for a, _ in _pairs(batches)]
    assert len(anchors) == len(set(anchors))
    pairs = batch_size // 2
    if drop_last:
        assert all(len(b) == 2 * pairs for b in batches)
        assert len(anchors) == sampler.num_anchors // pairs * pairs
    else:
        assert sorted(anchors) == groups.anchors.tolist()
    assert sampler.num_anchors == 140 and sampler.num_without_partner == 10


def test_order_depends_only_on_seed_and_epoch():
    groups = GroupCandidates(np.arange(400) // 3)
    first = PositivePairBatchSampler(groups, batch_size=16, seed=3)
    second = PositivePairBatchSampler(groups, batch_size=16, seed=3)
    first.set_epoch(2)
    second.set_epoch(2)
    assert first.batches() == second.batches()
    epoch_two = first.batches()
    first.set_epoch(3)
    assert first.batches() != epoch_two
    first.set_epoch(2)
    assert first.batches() == epoch_two  # a resumed epoch replays
    assert PositivePairBatchSampler(groups, batch_size=16, seed=4).batches() != PositivePairBatchSampler(
        groups, batch_size=16, seed=3).batches()


def test_order_does_not_depend_on_string_hashing():
    script = (
        "import json, numpy as np\n"
        "from cardiomm.training.positive_pairs import GroupCandidates, PositivePairBatchSampler\n"
        "ids = [('band', i % 7, 'MF'[i % 2]) if i % 11 else None for i in range(300)]\n"
        "ids += [f'patient-{i % 40}' for i in range(300)]\n"
        "s = PositivePairBatchSampler(GroupCandidates(ids), batch_size=10, seed=5)\n"
        "s.set_epoch(1)\n"
        "print(json.dumps(s.batches()))\n"
    )
    here = {}
    exec(script.replace("print(json.dumps(s.batches()))", "batches = s.batches()"), here)
    # another process with another string-hash seed than this one
    hash_seed = "123" if os.environ.get("PYTHONHASHSEED") != "123" else "456"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == here["batches"] and len(here["batches"]) > 0


def test_no_shuffle_gives_the_same_batches_every_epoch():
    neighbours = AttributeNeighbours(_random_attributes(seed=2), threshold=0.8, max_neighbours=8)
    sampler = PositivePairBatchSampler(neighbours, batch_size=10, seed=0, shuffle=False, drop_last=False)
    batches = sampler.batches()
    for epoch in (1, 5):
        sampler.set_epoch(epoch)
        assert sampler.batches() == batches
    assert [a for a, _ in _pairs(batches)] == neighbours.anchors.tolist()


def test_sampler_rejects_a_candidate_set_without_pairs_and_tiny_batches():
    with pytest.raises(ValueError, match="no ECG has a positive partner"):
        PositivePairBatchSampler(GroupCandidates(["a", "b", None]), batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        PositivePairBatchSampler(GroupCandidates(["a", "a"]), batch_size=1)


def test_data_loader_and_resume_wrapper_accept_the_sampler():
    ids = np.arange(60) // 4
    groups = GroupCandidates(ids)
    sampler = PositivePairBatchSampler(groups, batch_size=8, seed=1)
    data = torch.utils.data.TensorDataset(torch.arange(60), torch.as_tensor(ids))
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) == 15
    for rows, row_groups in batches:
        assert rows.shape == (8,)
        assert torch.equal(row_groups[0::2], row_groups[1::2])  # each anchor next to a partner of its group

    keyed = KeyedBatchSampler(sampler)
    keyed.set_epoch(4)
    assert keyed.epoch == sampler.epoch == 4 and len(keyed) == len(sampler)
    assert [[k.index for k in b] for b in keyed] == sampler.batches()
    assert all(k.epoch == 4 for b in keyed for k in b)


# ---------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.synthetic import synthesize

    out = tmp_path_factory.mktemp("ssl_pairs")
    synthesize(n_patients=30, out_dir=out, measure=True, write_wfdb_files=False, include_ehr=False,
               progress=False)
    splits, info = load_ecg_dataset(out)
    return splits, info


def test_group_ids_follow_patients_demographics_and_rhythm(synthetic):
    splits, _ = synthetic
    train = splits["train"]
    table = train.select_columns(["patient_id", "age", "sex", "labels_rhythm"]).to_pandas()

    patients = group_ids(train, "pclr", {})
    assert patients.tolist() == table.patient_id.tolist()
    groups = GroupCandidates(patients)
    assert len(groups.anchors) > 0
    for anchor, partner in _pairs(PositivePairBatchSampler(groups, batch_size=8).batches()):
        assert table.patient_id[anchor] == table.patient_id[partner]

    demographics = group_ids(train, "demographics", {"age_band_years": 5})
    expected = [(int(np.floor(a / 5)), s) for a, s in zip(table.age, table.sex)]
    assert demographics.tolist() == expected

    rhythm = group_ids(train, "rhythm", {})
    assert rhythm.tolist() == [tuple(np.flatnonzero(v).tolist()) for v in table.labels_rhythm]
    for anchor, partner in _pairs(PositivePairBatchSampler(GroupCandidates(rhythm), batch_size=8).batches()):
        assert np.array_equal(table.labels_rhythm[anchor], table.labels_rhythm[partner])

    for strategy in ("cmsc", "simclr", "attributes"):
        assert group_ids(train, strategy, {}) is None


def test_unknown_demographics_have_no_group():
    from datasets import Dataset

    data = Dataset.from_dict({"patient_id": ["p1", "p2", "", "p4", "p1"],
                              "age": [61.0, float("nan"), 65.0, 64.0, 62.0], "sex": ["M", "F", "F", "", "M"]})
    assert group_ids(data, "demographics", {}).tolist() == [(6, "M"), None, (6, "F"), None, (6, "M")]
    assert group_ids(data, "pclr", {}).tolist() == ["p1", "p2", None, "p4", "p1"]


def test_group_ids_reject_unknown_options_strategies_and_tasks(synthetic):
    train = synthetic[0]["train"]
    with pytest.raises(ValueError, match=r"'band'.*accepted: age_band_years"):
        group_ids(train, "demographics", {"band": 5})
    with pytest.raises(ValueError, match="strategies: " + ", ".join(STRATEGIES)):
        group_ids(train, "patients", {})
    with pytest.raises(ValueError, match=r"labels_beats.*tasks of the dataset: conditions, rhythm"):
        group_ids(train, "rhythm", {"task": "beats"})


def test_wave_attributes_pick_measured_columns_and_check_explicit_ones(synthetic):
    from cardiomm.synthetic import WAVE_ATTRIBUTES

    train = synthetic[0]["train"]
    values, names = wave_attributes(train, "auto", progress=False)
    assert names == [f"measured_{a}" for a in WAVE_ATTRIBUTES]
    assert values.shape == (len(train), len(WAVE_ATTRIBUTES))
    np.testing.assert_allclose(values[:, 0], np.asarray(train["measured_heart_rate"], dtype=np.float64))
    assert not np.allclose(values[:, 0], np.asarray(train["true_heart_rate"], dtype=np.float64))

    values, names = wave_attributes(train, ["true_qtc", "age"])
    assert names == ["true_qtc", "age"] and values.shape == (len(train), 2)
    with pytest.raises(ValueError, match=r"measured_p_axis.*it has: ecg_id"):
        wave_attributes(train, ["measured_heart_rate", "measured_p_axis"])


def test_wave_attributes_measure_signals_when_no_columns_hold_them(synthetic):
    splits, info = synthetic
    rows = splits["train"].select(range(3))
    measured = [c for c in rows.column_names if c.startswith("measured_")]
    expected = np.stack([np.asarray(rows[c], dtype=np.float64) for c in measured], axis=1)
    bare = rows.remove_columns(measured + [c for c in rows.column_names if c.startswith("true_")])
    with pytest.raises(ValueError, match="sampling_rate"):
        wave_attributes(bare, progress=False)
    # leads stored in reverse order: lead_names tells where each standard lead is
    reversed_leads = bare.map(lambda row: {"ecg": np.asarray(row["ecg"])[::-1].copy()})
    values, names = wave_attributes(reversed_leads, sampling_rate=info.sampling_rate, progress=False,
                                    lead_names=info.lead_names[::-1])
    assert names == [c[len("measured_"):] for c in measured]
    np.testing.assert_allclose(values, expected, rtol=1e-4, equal_nan=True)
    # columns present but never filled (a cohort written without measuring) count as absent: the ECGs are measured
    unfilled = rows.map(lambda row: {c: None for c in measured})
    values, names = wave_attributes(unfilled, sampling_rate=info.sampling_rate, progress=False)
    assert names == [c[len("measured_"):] for c in measured]
    np.testing.assert_allclose(values, expected, rtol=1e-4, equal_nan=True)


def test_wave_attributes_from_mimic_machine_measurements():
    from datasets import Dataset

    data = Dataset.from_dict({
        "rr_interval": [1000.0, 750.0, 800.0], "p_onset": [40.0, 29999.0, 50.0], "p_end": [140.0, 29999.0, 150.0],
        "qrs_onset": [200.0, 210.0, 220.0], "qrs_end": [290.0, 300.0, 320.0], "t_end": [600.0, 570.0, 620.0],
        "p_axis": [60.0, 29999.0, 45.0], "qrs_axis": [30.0, -20.0, 80.0], "t_axis": [40.0, 50.0, 60.0],
    })
    values, names = wave_attributes(data, progress=False)
    assert names == ["heart_rate", "pr_interval", "qrs_duration", "qt_interval", "qtc", "p_axis", "qrs_axis",
                     "t_axis"]
    np.testing.assert_allclose(values[0], [60.0, 160.0, 90.0, 400.0, 400.0, 60.0, 30.0, 40.0])
    assert values[1, 0] == pytest.approx(80.0) and values[1, 4] == pytest.approx(360.0 / np.sqrt(0.75))
    assert np.isnan(values[1, 1]) and np.isnan(values[1, 5])  # the carts' missing-value code


def test_check_disjoint_patients(synthetic):
    splits = synthetic[0]
    check_disjoint_patients(splits["train"], splits["test"])
    forged = splits["test"].select_columns(["patient_id"]).to_dict()["patient_id"] + [splits["train"][0]["patient_id"]]
    with pytest.raises(ValueError, match=splits["train"][0]["patient_id"]):
        check_disjoint_patients(splits["train"], forged)


# ------------------------------------------------------------------------------------------- the numbers


def test_standardise_uses_the_reference_statistics():
    reference = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan], [np.nan, 5.0, np.nan]])
    values = np.array([[2.0, 7.0, 1.0], [5.0, np.nan, 2.0]])
    out = standardise(values, reference)
    np.testing.assert_allclose(out[:, 0], [0.0, 3.0])  # mean 2, std 1
    np.testing.assert_allclose(out[0, 1], 2.0)  # constant column: divided by 1
    assert np.isnan(out[1, 1])
    np.testing.assert_allclose(out[:, 2], [1.0, 2.0])  # no reference value: unchanged


def test_neighbour_index_cost_reports_sane_numbers():
    cost = neighbour_index_cost(num_ecgs=3000, num_attributes=7, threshold=1.0, max_neighbours=8)
    assert set(cost) >= {"build_s", "epoch_sampling_s", "memory_mb", "mean_candidates", "fraction_without_partner"}
    assert 0 < cost["mean_candidates"] <= 8 and 0 <= cost["fraction_without_partner"] < 0.5
    assert cost["memory_mb"] == pytest.approx((3001 * 8 + cost["mean_candidates"] * 3000 * 4) / 2**20)
    assert cost["build_s"] > 0 and cost["epoch_sampling_s"] >= 0
