"""Evaluation suite on synthetic embeddings with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cardiomm.data.splits import stratified_fraction
from cardiomm.evaluation import (
    RelativeMahalanobis,
    aggregate_windows,
    class_text_embeddings,
    classification_metrics,
    l2_normalize,
    linear_probe,
    load_results,
    max_f1,
    median_percentile_rank,
    ood_auroc,
    percentile_ranks,
    plot_roc_curves,
    precision_at_k,
    rejection_rate,
    relative_mahalanobis,
    results_table,
    save_results,
    write_results,
    zero_shot_classify,
    zero_shot_regression,
)


def lookup_encoder(table: dict[str, np.ndarray], calls: list | None = None):
    """A text encoder that returns fixed vectors per prompt (and records its calls)."""

    def encode(texts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(list(texts))
        return np.stack([table[t] for t in texts])

    return encode


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_perfect_random_and_known_max_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(400, 3))
    perfect = classification_metrics(y, y + 0.1 * rng.random(y.shape), ["a", "b", "c"])
    assert perfect.macro_auroc == 1.0 and perfect.macro_max_f1 == 1.0
    random = classification_metrics(rng.integers(0, 2, size=(4000, 3)), rng.random((4000, 3)))
    assert abs(random.macro_auroc - 0.5) < 0.03
    f1, threshold = max_f1(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.7)
    indices = classification_metrics(np.array([0, 1, 2, 0]), np.eye(3)[[0, 1, 2, 0]])
    assert indices.macro_auroc == 1.0


def test_single_value_classes_are_skipped_and_reported():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.8, 0.2, 0.5], [0.1, 0.4, 0.5]])
    with pytest.warns(UserWarning, match="single label value"):
        m = classification_metrics(y, scores, ["AFIB", "AFLT", "SR"])
    assert m.skipped == ["AFLT", "SR"]
    assert list(m.auroc) == ["AFIB"] and m.macro_auroc == 1.0


# ------------------------------------------------------------------------------------------ zero-shot
def test_zero_shot_separating_embeddings_give_auroc_one():
    rng = np.random.default_rng(1)
    names = ["NORM", "MI", "STTC"]
    basis = np.eye(8)[:3]
    prompts = {n: [f"{n} prompt {i}" for i in range(3)] for n in names}
    table = {p: basis[k] + 0.05 * rng.normal(size=8) for k, n in enumerate(names) for p in prompts[n]}
    cls = rng.integers(0, 3, size=300)
    ecg = basis[cls] * rng.uniform(0.5, 3.0, size=(300, 1)) + 0.05 * rng.normal(size=(300, 8))
    result = zero_shot_classify(ecg, prompts, lookup_encoder(table), labels=np.eye(3)[cls])
    assert result.scores.shape == (300, 3)
    assert result.metrics.macro_auroc == 1.0
    assert all(v == 1.0 for v in result.metrics.auroc.values())


def test_zero_shot_random_embeddings_are_at_chance():
    rng = np.random.default_rng(2)
    prompts = {f"c{k}": [f"p{k}"] for k in range(4)}
    table = {f"p{k}": rng.normal(size=32) for k in range(4)}
    result = zero_shot_classify(
        rng.normal(size=(3000, 32)), prompts, lookup_encoder(table), labels=rng.integers(0, 2, size=(3000, 4))
    )
    assert abs(result.metrics.macro_auroc - 0.5) < 0.04


def test_prompt_ensembling_averages_normalised_prompt_embeddings():
    rng = np.random.default_rng(3)
    raw = {"a1": rng.normal(size=6) * 10, "a2": rng.normal(size=6) * 0.1, "b1": rng.normal(size=6)}
    calls: list = []
    names, emb = class_text_embeddings({"A": ["a1", "a2"], "B": "b1"}, lookup_encoder(raw, calls))
    assert names == ["A", "B"] and len(calls) == 1  # one batched call
    expected_a = l2_normalize(l2_normalize(raw["a1"]) + l2_normalize(raw["a2"]))
    np.testing.assert_allclose(emb[0], expected_a)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)
    torch = pytest.importorskip("torch")
    _, from_torch = class_text_embeddings(
        {"A": ["a1", "a2"], "B": "b1"}, lambda t: torch.tensor(np.stack([raw[x] for x in t]), dtype=torch.float32)
    )
    np.testing.assert_allclose(from_torch, emb, atol=1e-6)


def test_zero_shot_classes_match_exactly_never_by_substring():
    names = ["MI", "AMI", "IMI", "AFL", "AFLT"]
    basis = np.eye(5)
    prompts = {n: [f"{n} prompt"] for n in names}
    table = {f"{n} prompt": basis[k] for k, n in enumerate(names)}
    labels = pd.DataFrame(np.eye(5, dtype=int)[[0, 1, 2, 3, 4] * 4], columns=names)
    shuffled = labels[["AFLT", "IMI", "MI", "AFL", "AMI"]]  # columns found by name, not position
    result = zero_shot_classify(basis[[0, 1, 2, 3, 4] * 4], prompts, lookup_encoder(table), labels=shuffled)
    np.testing.assert_allclose(result.scores[:5], np.eye(5), atol=1e-12)  # each class scores only its own prompt
    assert result.metrics.macro_auroc == 1.0
    with pytest.raises(KeyError, match="MI"):  # prompts for AMI/IMI are never used for MI
        zero_shot_classify(
            basis, {"AMI": ["AMI prompt"], "IMI": ["IMI prompt"]}, lookup_encoder(table), label_names=["MI"]
        )
    with pytest.raises(KeyError, match="AFL"):
        zero_shot_classify(basis[:2], {"AFL": ["AFL prompt"]}, lookup_encoder(table), labels=labels[["AFLT"]])


def test_zero_shot_regression_recovers_the_matching_value():
    angles = np.linspace(0, np.pi / 2, 11)
    values = {float(v): [f"value {v}"] for v in range(0, 110, 10)}
    table = {f"value {v}": np.array([np.cos(a), np.sin(a)]) for v, a in zip(range(0, 110, 10), angles)}
    ecg = np.array([[np.cos(angles[4]), np.sin(angles[4])], [np.cos(angles[9]), np.sin(angles[9])]])
    predicted = zero_shot_regression(ecg, values, lookup_encoder(table), logit_scale=1000.0)
    np.testing.assert_allclose(predicted, [40.0, 90.0], atol=0.5)


# ------------------------------------------------------------------------------------------ linear probe
def _mixture(rng, n, w, prevalence=(0.3, 0.2, 0.4), signal=2.0):
    y = (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(int)
    x = rng.normal(size=(n, w.shape[1])) + signal * y @ w
    return x, y


def test_linear_probe_finds_a_planted_signal_and_not_noise():
    rng = np.random.default_rng(4)
    w = l2_normalize(rng.normal(size=(3, 10)))
    train, val, test = (_mixture(rng, n, w) for n in (500, 200, 200))
    result = linear_probe(train, val, test, fractions=(0.1, 1.0), seeds=(0, 1), Cs=(0.01, 1.0))
    summary = result.summary()
    assert summary[1.0]["mean"] > 0.9 and summary[0.1]["mean"] > 0.8
    assert summary[1.0]["std"] == 0.0 and summary[1.0]["n_seeds"] == 2
    noise = [(rng.normal(size=(n, 10)), rng.integers(0, 2, size=(n, 3))) for n in (500, 300, 300)]
    chance = linear_probe(*noise, fractions=(1.0,), seeds=(0,), Cs=(0.01, 1.0)).summary()[1.0]["mean"]
    assert abs(chance - 0.5) < 0.08


def test_linear_probe_selects_C_on_validation_not_test():
    rng = np.random.default_rng(5)
    w = l2_normalize(rng.normal(size=(1, 30)))
    train = _mixture(rng, 60, w, prevalence=(0.5,), signal=0.6)
    x_val, y_val = _mixture(rng, 300, w, prevalence=(0.5,), signal=0.6)
    # same ECGs, complementary labels: every C's test AUROC is 1 - its validation AUROC,
    # so choosing C on test would pick the worst C on validation
    result = linear_probe(
        train, (x_val, y_val), (x_val, 1 - y_val), fractions=(1.0,), seeds=(0,), Cs=(1e-4, 1e-2, 1.0, 100.0)
    )
    run = result.runs[0]
    val_by_c, test_by_c = np.array(run.val_macro_auroc_by_C), np.array(run.test_macro_auroc_by_C)
    np.testing.assert_allclose(test_by_c, 1 - val_by_c)
    assert val_by_c.max() > val_by_c.min() + 1e-3  # C matters on this data
    best_on_val = int(np.argmax(val_by_c))
    assert run.C == result.Cs[best_on_val]
    assert run.test_macro_auroc == pytest.approx(test_by_c[best_on_val])
    assert run.test_macro_auroc < test_by_c.max()  # what selecting on test would have reported


def test_linear_probe_label_columns_must_match_across_splits():
    rng = np.random.default_rng(6)
    w = l2_normalize(rng.normal(size=(3, 8)))
    names = ["AFIB", "SR", "STACH"]
    splits = [_mixture(rng, n, w) for n in (200, 100, 100)]
    frames = [(x, pd.DataFrame(y, columns=names)) for x, y in splits]
    reordered = frames[2][1][["STACH", "AFIB", "SR"]]
    aligned = linear_probe(frames[0], frames[1], (frames[2][0], reordered), fractions=(1.0,), seeds=(0,), Cs=(1.0,))
    plain = linear_probe(*splits, fractions=(1.0,), seeds=(0,), Cs=(1.0,), label_names=names)
    assert aligned.label_names == names
    assert aligned.runs[0].test_auroc == pytest.approx(plain.runs[0].test_auroc)
    renamed = frames[2][1].rename(columns={"STACH": "ST"})
    with pytest.raises(ValueError, match="differ"):
        linear_probe(frames[0], frames[1], (frames[2][0], renamed), fractions=(1.0,), seeds=(0,))
    with pytest.raises(ValueError, match="label columns"):
        linear_probe(splits[0], splits[1], (splits[2][0], splits[2][1][:, :2]), fractions=(1.0,), seeds=(0,))


def test_linear_probe_refuses_to_choose_C_without_a_usable_validation_split():
    rng = np.random.default_rng(8)
    w = l2_normalize(rng.normal(size=(2, 8)))
    train, test = _mixture(rng, 200, w, prevalence=(0.3, 0.4)), _mixture(rng, 100, w, prevalence=(0.3, 0.4))
    x_val = rng.normal(size=(50, 8))
    # every validation ECG negative for one class, positive for the other: no C can be compared on validation
    y_val = np.tile([0, 1], (50, 1))
    with pytest.raises(ValueError, match="C cannot be chosen on validation"):
        linear_probe(train, (x_val, y_val), test, fractions=(1.0,), seeds=(0,), Cs=(0.1, 1.0))
    # one usable validation class is enough; the other is left out of the choice of C
    y_val[:25, 0] = 1
    with pytest.warns(UserWarning, match="validation split"):
        result = linear_probe(train, (x_val, y_val), test, fractions=(1.0,), seeds=(0,), Cs=(0.1, 1.0))
    assert result.skipped_val == ["1"] and np.isfinite(result.runs[0].val_macro_auroc)


def test_auroc_columns_equal_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from cardiomm.evaluation.metrics import auroc_columns

    rng = np.random.default_rng(9)
    for n in (2, 7, 60):
        y = rng.integers(0, 2, size=(n, 5))
        y[:, 4] = 1  # a class without negatives has no AUROC
        for scores in (rng.normal(size=(n, 5)), rng.integers(0, 3, size=(n, 5)).astype(float)):
            values = auroc_columns(y, scores)
            for j in range(5):
                if 0 < y[:, j].sum() < n:
                    assert values[j] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]), abs=1e-12)
                else:
                    assert np.isnan(values[j])
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc_columns(np.array([[0], [1]]), np.array([[0.1], [np.nan]]))


def test_training_fractions_keep_prevalence_and_are_reproducible():
    rng = np.random.default_rng(7)
    prevalence = np.array([0.004, 0.02, 0.05, 0.1, 0.2, 0.4])
    w = l2_normalize(rng.normal(size=(6, 8)))
    train = _mixture(rng, 5000, w, prevalence=tuple(prevalence))
    val, test = _mixture(rng, 300, w, prevalence=(0.3,) * 6), _mixture(rng, 300, w, prevalence=(0.3,) * 6)
    full = train[1].mean(axis=0)
    result = linear_probe(train, val, test, fractions=(0.01, 0.1), seeds=(0, 1), Cs=(1.0,))
    for run in result.runs:
        kept = np.array(list(run.train_prevalence.values()))
        assert run.n_train >= round(run.fraction * 5000)
        assert np.all(kept > 0)  # at least one positive per label
        tolerance = 0.01 if run.fraction == 0.1 else 0.03
        assert np.all(np.abs(kept - full) <= np.maximum(tolerance, 1.0 / run.n_train)), run
    again = linear_probe(train, val, test, fractions=(0.01,), seeds=(1,), Cs=(1.0,)).runs[0]
    assert (again.test_auroc, again.train_prevalence) == (result.runs[1].test_auroc, result.runs[1].train_prevalence)
    assert not np.array_equal(stratified_fraction(train[1], 0.1, seed=0), stratified_fraction(train[1], 0.1, seed=1))


# ------------------------------------------------------------------------------------------ retrieval
def test_precision_at_k_on_planted_clusters():
    rng = np.random.default_rng(8)
    centres = np.eye(16)[:4] * 10
    cls = np.repeat(np.arange(4), 150)
    ecg = centres[cls] + rng.normal(size=(600, 16))
    with pytest.warns(UserWarning, match="clipped"):
        p = precision_at_k(ecg, ecg, cls, cls, exclude_self=True)
    assert list(p) == [100, 500, 599]
    assert p[100] == 1.0
    assert p[500] == pytest.approx(149 / 500) and p[599] == pytest.approx(149 / 599)
    text = centres + 0.01  # one "prompt" per class, as text queries
    t2e = precision_at_k(text, ecg, np.eye(4), np.eye(4)[cls], ks=(100, 150))
    assert t2e == {100: 1.0, 150: 1.0}
    shuffled = precision_at_k(rng.normal(size=(200, 16)), ecg, rng.integers(0, 4, 200), cls, ks=(100,))
    assert abs(shuffled[100] - 0.25) < 0.05


def test_precision_at_k_relevance_rule_for_multi_label():
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])  # ranking for the query: 1, 2, 0
    query_labels = np.array([[1, 0]])
    gallery_labels = np.array([[1, 0], [0, 1], [1, 1]])  # shares a label: items 0 and 2
    p = precision_at_k(query, gallery, query_labels, gallery_labels, ks=(1, 2, 3))
    assert p == {1: 0.0, 2: 0.5, 3: pytest.approx(2 / 3)}
    with pytest.warns(UserWarning, match="without a positive label"):
        p2 = precision_at_k(np.r_[query, query], gallery, np.array([[1, 0], [0, 0]]), gallery_labels, ks=(2,))
    assert p2 == {2: 0.5}


def test_median_percentile_rank_of_true_pairs():
    rng = np.random.default_rng(9)
    ecg = rng.normal(size=(500, 32))
    report = ecg + 0.05 * rng.normal(size=(500, 32))
    assert median_percentile_rank(ecg, report) == 0.0
    assert abs(median_percentile_rank(ecg, rng.normal(size=(500, 32))) - 50) < 5
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    # query 0: one candidate above its pair and one tie; query 1: one tie; query 2: its pair is first
    np.testing.assert_allclose(percentile_ranks(q, c), [75.0, 25.0, 0.0])


# ------------------------------------------------------------------------------------------ OOD
def test_relative_mahalanobis_detects_a_shifted_cluster():
    rng = np.random.default_rng(10)
    means = np.eye(8)[:3] * 4
    cls = rng.integers(0, 3, 900)
    train = means[cls] + rng.normal(size=(900, 8))
    held_in = means[rng.integers(0, 3, 300)] + rng.normal(size=(300, 8))
    shifted = -8 * np.eye(8)[0] + rng.normal(size=(300, 8))  # class-0 cluster moved along its class axis
    detector = RelativeMahalanobis.fit(train, cls)
    assert ood_auroc(detector.score(held_in), detector.score(shifted)) > 0.99
    assert rejection_rate(detector.score(held_in), detector.score(shifted), significance=(0.05,))[0.05] > 0.95
    in_rate = rejection_rate(detector.score(held_in[:150]), detector.score(held_in[150:]), significance=(0.1,))
    assert 0.03 < in_rate[0.1] < 0.2  # in-distribution data is rejected at about the significance level
    np.testing.assert_allclose(relative_mahalanobis(train, np.eye(3)[cls], shifted), detector.score(shifted))
    # the definition, written out: min_k MD_k - MD_0
    z = shifted[:5]
    within = np.concatenate([train[cls == k] - train[cls == k].mean(0) for k in range(3)])
    prec, prec0 = np.linalg.inv(within.T @ within / len(train)), np.linalg.inv(np.cov(train.T, bias=True))
    def squared(diff, precision):
        return np.einsum("nd,de,ne->n", diff, precision, diff)

    md = np.stack([squared(z - train[cls == k].mean(0), prec) for k in range(3)], axis=1)
    md0 = squared(z - train.mean(0), prec0)
    np.testing.assert_allclose(detector.score(z), md.min(1) - md0, rtol=1e-4)


# ------------------------------------------------------------------------------------------ aggregation
def test_median_over_windows():
    x = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    x[0, 4] = 1000.0  # an outlier window does not move the median
    out = aggregate_windows(x)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.median(x, axis=1))
    np.testing.assert_array_equal(out[0], x[0, 2])
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    masked = aggregate_windows(x, window_mask=mask)
    np.testing.assert_array_equal(masked[0], x[0, :2].mean(axis=0))
    assert aggregate_windows(x[..., 0]).shape == (2,)
    with pytest.raises(ValueError):
        aggregate_windows(x[0, 0])


# ------------------------------------------------------------------------------------------ plots and results
def test_roc_png_is_written(tmp_path):
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, size=(100, 3))
    y[:, 2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no backend or display warning
        path = plot_roc_curves(y, y + rng.normal(size=y.shape), tmp_path / "roc" / "curves.png", ["AFIB", "SR", "PACE"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_results_json_round_trip_and_markdown_table(tmp_path):
    rng = np.random.default_rng(12)
    w = l2_normalize(rng.normal(size=(2, 6)))
    probe = linear_probe(*(_mixture(rng, n, w, prevalence=(0.3, 0.4)) for n in (200, 100, 100)),
                         fractions=(0.1, 1.0), seeds=(0,), Cs=(1.0,))
    results = {"auroc": np.float32(0.75), "per_class": np.array([0.5, 1.0]), "missing": float("nan"), "probe": probe}
    path = save_results(results, tmp_path / "results.json")
    loaded = load_results(path)
    assert loaded["auroc"] == pytest.approx(0.75) and loaded["per_class"] == [0.5, 1.0] and loaded["missing"] is None
    assert loaded["probe"]["summary"]["1.0"]["mean"] == pytest.approx(probe.summary()[1.0]["mean"])
    assert save_results(loaded, tmp_path / "again.json").read_text() == path.read_text()
    table = write_results(probe, probe.rows(), tmp_path / "probe.json")
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "fraction" and len(lines) == 4
    assert f"{probe.summary()[1.0]['mean']:.3f}" in table
    assert results_table([]) == "(no rows)"


def test_signal_statistics_features_separate_amplitude_and_frequency() -> None:
    from cardiomm.evaluation.baselines import BANDS_HZ, PERCENTILES, signal_statistics

    t = np.arange(2500) / 250.0
    slow = np.tile(np.sin(2 * np.pi * 1.0 * t), (12, 1))
    fast = np.tile(0.1 * np.sin(2 * np.pi * 20.0 * t), (12, 1))
    feats = signal_statistics(np.stack([slow, fast]), 250.0)
    per_lead = 1 + len(PERCENTILES) + len(BANDS_HZ)
    assert feats.shape == (2, 12 * per_lead) and feats.dtype == np.float32
    lead0 = feats[:, :per_lead]
    assert lead0[0, 0] > 5 * lead0[1, 0]  # std
    band = lambda f, k: f[1 + len(PERCENTILES) + k]  # noqa: E731
    assert band(lead0[0], 0) > band(lead0[0], 3) and band(lead0[1], 3) > band(lead0[1], 0)
    with pytest.raises(ValueError, match="records, leads, time"):
        signal_statistics(np.zeros((12, 100)), 250.0)


# ------------------------------------------------------------------------------------------------ embedding inputs
def test_embed_ecgs_prepares_inputs_with_the_processor_and_passes_the_time_mask() -> None:
    import torch
    from datasets import Dataset

    from cardiomm import ECGEncoderConfig, ECGEncoderModel, ECGFeatureExtractor
    from cardiomm.evaluation.embeddings import embed_ecgs

    torch.manual_seed(0)
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8")).eval()
    extractor = ECGFeatureExtractor(sampling_rate=250, crop_length=600, min_length=250, window_stride=200,
                                    num_windows=2)
    ecg = np.random.default_rng(0).standard_normal((3, 12, 1000)).astype(np.float32)  # 500 samples at 250 Hz
    recorded = np.ones((3, 12), dtype=bool)
    recorded[2, 7] = False  # the dataset did not record V2 of ECG 2
    dataset = Dataset.from_dict({"ecg": ecg, "lead_mask": recorded}).with_format("numpy")
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)

    embeddings = embed_ecgs(model, extractor, dataset, sampling_rate=500, batch_size=2, normalize=False,
                            progress=False)
    inputs = extractor(ecg, sampling_rate=500, crop="center")
    assert inputs["time_mask"].sum(-1).tolist() == [500] * 3  # padded to crop_length 600
    assert torch.equal(torch.cat([kwargs["time_mask"] for kwargs in seen]), inputs["time_mask"])
    inputs["lead_mask"][2, 7] = False
    assert torch.equal(torch.cat([kwargs["lead_mask"] for kwargs in seen]), inputs["lead_mask"])
    with torch.no_grad():
        expected = model(**inputs).pooler_output.numpy()
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)  # batches of 2 and 1 vs 3

    seen.clear()  # test-time windows: one time mask per window
    embed_ecgs(model, extractor, dataset, sampling_rate=500, crop="windows", progress=False)
    assert seen[0]["time_mask"].shape == (6, 600) and seen[0]["time_mask"].sum(-1).tolist() == [500, 300] * 3


def test_embed_ecgs_matches_dataset_leads_to_a_model_in_another_lead_order() -> None:
    """A model pretrained in MERL's lead order (aVF before aVL) embedding a dataset in the standard order: with the
    dataset's lead names, signal and recorded-lead mask reach the model in the model's order."""
    import torch
    from datasets import Dataset

    from cardiomm import ECGEncoderConfig, ECGEncoderModel, ECGFeatureExtractor
    from cardiomm.data.collators import ECGCollator
    from cardiomm.evaluation.embeddings import embed_ecgs
    from cardiomm.modeling.configuration_ecg_encoder import MERL_LEAD_NAMES, STANDARD_12_LEAD_NAMES

    torch.manual_seed(0)
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8", lead_names=MERL_LEAD_NAMES)).eval()
    extractor = ECGFeatureExtractor(lead_names=MERL_LEAD_NAMES, sampling_rate=500, crop_length=1000)
    ecg = np.random.default_rng(1).standard_normal((2, 12, 1000)).astype(np.float32)  # standard order
    recorded = np.ones((2, 12), dtype=bool)
    recorded[1, 4] = False  # ECG 1 has no aVL (index 4 in the standard order, 5 in MERL's)
    dataset = Dataset.from_dict({"ecg": ecg, "lead_mask": recorded}).with_format("numpy")
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)

    embed_ecgs(model, extractor, dataset, sampling_rate=500, progress=False, lead_names=STANDARD_12_LEAD_NAMES)
    swapped = ecg[:, [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]]
    expected = extractor(swapped, sampling_rate=500, crop="center")["input_values"]
    torch.testing.assert_close(seen[0]["input_values"], expected)
    assert seen[0]["lead_mask"][1].tolist() == [True] * 5 + [False] + [True] * 6  # aVL is slot 5 for the model

    # the training collator matches the dataset's lead mask the same way
    batch = ECGCollator(extractor, sampling_rate=500, lead_names=STANDARD_12_LEAD_NAMES, crop="center")(
        [dict(ecg=ecg[i], lead_mask=recorded[i]) for i in range(2)])
    assert batch["lead_mask"][1].tolist() == [True] * 5 + [False] + [True] * 6
    torch.testing.assert_close(batch["input_values"], expected)
