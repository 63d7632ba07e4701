"""ECG views for self-supervised learning (``cardiomm.training.ecg_views``) and ``SelfSupervisedCollator``: the
CLOCS windows and leads are where they should be, each augmentation does what it says, 3KG without rotation,
scaling or masking keeps what its VCG path can keep, and the collator's batch is shaped and labelled per view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiomm import ECGFeatureExtractor
from cardiomm.data.collators import SelfSupervisedCollator
from cardiomm.synthetic.ecg import DOWER_MATRIX, LEAD_DERIVATION
from cardiomm.training.ecg_views import STANDARD_LEADS, VIEW_KINDS, ECGViewMaker, WindowWarp

LEADS = list(STANDARD_LEADS)
NO_SIMCLR_AUGMENTATION = {"rotation_p": 0.0, "time_warp_p": 0.0, "window_warp_p": 0.0, "scaling_p": 0.0,
                          "flip_p": 0.0, "jitter_p": 0.0}
NO_3KG_CHANGE = {"max_angle": 0.0, "scale_range": (1.0, 1.0), "mask_ratio": 0.0}


def coded_records(n: int = 6, leads: int = 12, length: int = 300) -> torch.Tensor:
    """Records whose every sample says where it is: record * 1e5 + lead * 1e3 + time (exact in float32)."""
    return (torch.arange(n)[:, None, None] * 100_000 + torch.arange(leads)[None, :, None] * 1000
            + torch.arange(length)[None, None, :]).float()


def consistent_12_leads(n: int = 4, length: int = 200, seed: int = 0) -> torch.Tensor:
    """Random records whose limb leads follow Einthoven's and Goldberger's relations (12 standard leads, mV)."""
    independent = torch.randn(n, 8, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (torch.as_tensor(LEAD_DERIVATION) @ independent).float()


def dipolar_12_leads(n: int = 4, length: int = 200, seed: int = 0) -> torch.Tensor:
    """Records that are exactly the Dower projection of a random VCG."""
    vcg = torch.randn(n, 3, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (torch.as_tensor(LEAD_DERIVATION @ DOWER_MATRIX) @ vcg).float()


def located(view: torch.Tensor, lead_mask: torch.Tensor) -> tuple[int, list[int], int]:
    """(record, leads, first sample) a view of ``coded_records`` was cut from, checking it is one contiguous window
    of that record in every present lead."""
    present = lead_mask.nonzero()[:, 0].tolist()
    first = view[present[0], 0].item()
    record, start = int(first // 100_000), int(first % 1000)
    for lead in present:
        expected = record * 100_000 + lead * 1000 + start + torch.arange(view.shape[-1])
        assert torch.equal(view[lead], expected.float()), "not a contiguous window of one record and lead"
    return record, present, start


def test_crop_views_are_windows_of_their_record_with_all_leads() -> None:
    torch.manual_seed(0)
    ecg = coded_records()
    views, mask = ECGViewMaker("crop", 100, LEADS, 50)(ecg, torch.ones(6, 12, dtype=torch.bool))
    assert views.shape == (6, 12, 50) and mask.all()
    starts = set()
    for n in range(6):
        record, leads, start = located(views[n], mask[n])
        assert record == n and leads == list(range(12)) and 0 <= start <= 250
        starts.add(start)
    assert len(starts) > 1  # random windows


def test_cmsc_views_are_adjacent_disjoint_windows_of_the_same_record() -> None:
    torch.manual_seed(1)
    views, mask = ECGViewMaker("cmsc", 100, LEADS, 60)(coded_records(), torch.ones(6, 12, dtype=torch.bool))
    assert views.shape == (12, 12, 60) and mask.all()
    for n in range(6):
        (record_a, leads_a, start_a), (record_b, leads_b, start_b) = (located(views[2 * n + v], mask[2 * n + v])
                                                                      for v in range(2))
        assert record_a == record_b == n and leads_a == leads_b == list(range(12))
        assert start_b == start_a + 60  # adjacent, not overlapping
        assert 0 <= start_a and start_b + 60 <= 300


def test_cmlc_views_hold_one_different_recorded_lead_each_over_the_same_window() -> None:
    torch.manual_seed(2)
    recorded = torch.ones(6, 12, dtype=torch.bool)
    recorded[:, [2, 5, 9]] = False
    ecg = coded_records() * recorded[:, :, None]
    views, mask = ECGViewMaker("cmlc", 100, LEADS, 40)(ecg, recorded)
    assert views.shape == (12, 12, 40)
    assert torch.equal(mask.sum(dim=1), torch.ones(12, dtype=torch.long))
    for n in range(6):
        (record_a, (lead_a,), start_a), (record_b, (lead_b,), start_b) = (located(views[2 * n + v], mask[2 * n + v])
                                                                          for v in range(2))
        assert record_a == record_b == n and start_a == start_b
        assert lead_a != lead_b and recorded[n, lead_a] and recorded[n, lead_b]
        for v in range(2):  # every other lead is zero
            assert views[2 * n + v][~mask[2 * n + v]].abs().sum() == 0


def test_cmsmlc_views_differ_in_window_and_lead() -> None:
    torch.manual_seed(3)
    views, mask = ECGViewMaker("cmsmlc", 100, LEADS, 50)(coded_records(), torch.ones(6, 12, dtype=torch.bool))
    for n in range(6):
        (record_a, (lead_a,), start_a), (record_b, (lead_b,), start_b) = (located(views[2 * n + v], mask[2 * n + v])
                                                                          for v in range(2))
        assert record_a == record_b == n and lead_a != lead_b and start_b == start_a + 50


@pytest.mark.parametrize("kind", ["cmlc", "cmsmlc"])
def test_absent_leads_are_never_chosen(kind: str) -> None:
    torch.manual_seed(4)
    recorded = torch.rand(200, 12) < 0.4
    recorded[:, 0] = recorded[:, 7] = True  # at least two per record
    ecg = torch.randn(200, 12, 120) * recorded[:, :, None]
    _, mask = ECGViewMaker(kind, 100, LEADS, 60)(ecg, recorded)
    assert not (mask & ~recorded.repeat_interleave(2, dim=0)).any()
    chosen = mask.reshape(200, 2, 12).any(dim=1)
    assert chosen.sum() == 400  # two different leads per record
    assert mask[:, 1:].any()  # not always lead I


@pytest.mark.parametrize("kind", VIEW_KINDS)
def test_absent_leads_stay_zero_and_absent(kind: str) -> None:
    torch.manual_seed(5)
    recorded = torch.ones(8, 12, dtype=torch.bool)
    recorded[:, 3] = False  # aVR
    recorded[::2, 10] = False  # V5 in half the records
    ecg = torch.randn(8, 12, 200)  # the absent leads carry values: they must not leak into the views
    maker = ECGViewMaker(kind, 100, LEADS, 100)
    views, mask = maker(ecg, recorded)
    assert views.shape == (8 * maker.num_views, 12, 100)
    assert not (mask & ~recorded.repeat_interleave(maker.num_views, dim=0)).any()
    assert views[~mask].abs().sum() == 0


def test_simclr_views_keep_shape_and_differ_from_each_other_and_from_the_record() -> None:
    torch.manual_seed(6)
    ecg = consistent_12_leads(n=5, length=250)
    views, mask = ECGViewMaker("simclr", 100, LEADS, 250, jitter_p=1.0)(ecg, torch.ones(5, 12, dtype=torch.bool))
    assert views.shape == (10, 12, 250) and mask.all() and torch.isfinite(views).all()
    pairs = views.reshape(5, 2, 12, 250)
    assert ((pairs[:, 0] - pairs[:, 1]).abs().amax(dim=(1, 2)) > 1e-3).all()
    assert ((pairs - ecg[:, None]).abs().amax(dim=(2, 3)) > 1e-3).all()


def test_simclr_without_augmentation_returns_random_windows() -> None:
    torch.manual_seed(7)
    views, mask = ECGViewMaker("simclr", 100, LEADS, 80, **NO_SIMCLR_AUGMENTATION)(
        coded_records(), torch.ones(6, 12, dtype=torch.bool))
    starts = [located(views[i], mask[i]) for i in range(12)]
    assert [record for record, _, _ in starts] == [n for n in range(6) for _ in range(2)]
    assert len({start for _, _, start in starts}) > 2  # the two windows are drawn independently


def _only(**options: object) -> dict:
    return {**NO_SIMCLR_AUGMENTATION, **options}


def test_flipping_negates() -> None:
    ecg = consistent_12_leads(length=100)
    views, _ = ECGViewMaker("simclr", 100, LEADS, 100, **_only(flip_p=1.0))(ecg, torch.ones(4, 12, dtype=torch.bool))
    assert torch.equal(views, -ecg.repeat_interleave(2, dim=0))


def test_scaling_multiplies_each_view_by_one_factor_within_the_range() -> None:
    torch.manual_seed(8)
    ecg = consistent_12_leads(n=50, length=100)
    maker = ECGViewMaker("simclr", 100, LEADS, 100, **_only(scaling_p=1.0, scaling_range=(0.8, 1.25)))
    views, _ = maker(ecg, torch.ones(50, 12, dtype=torch.bool))
    source = ecg.repeat_interleave(2, dim=0)
    per_view = (views * source).sum(dim=(1, 2)) / source.square().sum(dim=(1, 2))  # least-squares factor
    torch.testing.assert_close(views, per_view[:, None, None] * source, rtol=1e-5, atol=1e-5)
    assert per_view.min() >= 0.8 - 1e-6 and per_view.max() <= 1.25 + 1e-6
    assert per_view.std() > 0.01  # drawn per view


def test_jitter_adds_noise_at_the_given_signal_to_noise_ratio() -> None:
    torch.manual_seed(9)
    ecg = consistent_12_leads(n=3, length=2000)
    maker = ECGViewMaker("simclr", 100, LEADS, 2000, **_only(jitter_p=1.0, jitter_snr_db=(20.0, 20.0)))
    views, _ = maker(ecg, torch.ones(3, 12, dtype=torch.bool))
    noise = views - ecg.repeat_interleave(2, dim=0)
    snr = 10 * torch.log10(ecg.repeat_interleave(2, dim=0).var(dim=-1) / noise.var(dim=-1))
    torch.testing.assert_close(snr, torch.full_like(snr, 20.0), atol=0.05, rtol=0)


def test_rotation_turns_the_heart_axis_and_keeps_the_limb_lead_relations() -> None:
    torch.manual_seed(10)
    ecg = consistent_12_leads(n=3, length=100)
    recorded = torch.ones(3, 12, dtype=torch.bool)
    still, _ = ECGViewMaker("simclr", 100, LEADS, 100, **_only(rotation_p=1.0, rotation_angle=0.0))(ecg, recorded)
    torch.testing.assert_close(still, ecg.repeat_interleave(2, dim=0), atol=1e-5, rtol=0)
    turned, _ = ECGViewMaker("simclr", 100, LEADS, 100, **_only(rotation_p=1.0, rotation_angle=30.0))(ecg, recorded)
    assert (turned - ecg.repeat_interleave(2, dim=0)).abs().amax() > 0.01
    lead = {name: turned[:, i] for i, name in enumerate(LEADS)}
    torch.testing.assert_close(lead["III"], lead["II"] - lead["I"], atol=1e-5, rtol=0)
    torch.testing.assert_close(lead["aVF"], lead["II"] - lead["I"] / 2, atol=1e-5, rtol=0)


def test_rotation_leaves_records_without_the_independent_leads_unchanged() -> None:
    ecg = consistent_12_leads(n=2, length=100)
    recorded = torch.ones(2, 12, dtype=torch.bool)
    recorded[1, LEADS.index("V3")] = False
    views, _ = ECGViewMaker("simclr", 100, LEADS, 100, **_only(rotation_p=1.0, rotation_angle=40.0))(ecg, recorded)
    expected = ecg[1] * recorded[1, :, None]
    assert torch.equal(views[2], expected) and torch.equal(views[3], expected)
    assert not torch.allclose(views[0], ecg[0], atol=1e-3)


def test_time_warping_keeps_length_and_endpoints() -> None:
    torch.manual_seed(11)
    ecg = consistent_12_leads(n=3, length=200)
    views, _ = ECGViewMaker("simclr", 100, LEADS, 200, **_only(time_warp_p=1.0, time_warp_sigma=(0.5, 0.5)))(
        ecg, torch.ones(3, 12, dtype=torch.bool))
    source = ecg.repeat_interleave(2, dim=0)
    torch.testing.assert_close(views[..., [0, -1]], source[..., [0, -1]], atol=1e-4, rtol=0)
    assert (views - source).abs().amax() > 0.05


def test_window_warping_keeps_length_and_endpoints_and_warps_one_window() -> None:
    """On a ramp (value = time) the output is the source time read at each output sample: its pace is the
    factor's inverse inside the window relative to the rest, and the window spans about factor * width samples."""
    torch.manual_seed(12)
    length, ratio = 400, 0.1
    ramp = torch.arange(length, dtype=torch.float32).expand(6, 1, length)
    width = ratio * (length - 1)
    for factor in (0.5, 2.0):
        warped = WindowWarp(window_ratio=ratio, scales=(factor,))(ramp)
        assert warped.shape == ramp.shape
        torch.testing.assert_close(warped[..., [0, -1]], ramp[..., [0, -1]])
        pace = warped.diff(dim=-1)[:, 0]  # source samples per output sample
        outside = (length - 1 + (factor - 1) * width) / (length - 1)
        inside = outside / factor
        assert (pace >= min(inside, outside) - 1e-3).all() and (pace <= max(inside, outside) + 1e-3).all()
        n_inside = (pace - inside).abs().lt(1e-3).sum(dim=-1)
        n_outside = (pace - outside).abs().lt(1e-3).sum(dim=-1)
        assert (n_inside + n_outside >= length - 3).all()  # two samples straddle the window's edges
        assert ((n_inside - factor * width / outside).abs() <= 2).all()
        starts = (pace - inside).abs().lt(1e-3).float().argmax(dim=-1)
        assert len(set(starts.tolist())) > 1  # the window's place is random
    torch.testing.assert_close(WindowWarp(scales=(1.0,))(ramp), ramp)


def test_window_warping_through_the_view_maker_keeps_endpoints() -> None:
    torch.manual_seed(13)
    ecg = consistent_12_leads(n=3, length=200)
    views, _ = ECGViewMaker("simclr", 100, LEADS, 200, **_only(window_warp_p=1.0))(
        ecg, torch.ones(3, 12, dtype=torch.bool))
    source = ecg.repeat_interleave(2, dim=0)
    torch.testing.assert_close(views[..., [0, -1]], source[..., [0, -1]], atol=1e-5, rtol=0)
    assert ((views - source).abs().amax(dim=(1, 2)) > 1e-3).all()


def test_3kg_kors_without_rotation_scaling_or_mask_returns_the_record() -> None:
    torch.manual_seed(14)
    ecg = consistent_12_leads(length=150)
    views, mask = ECGViewMaker("3kg", 100, LEADS, 150, vcg_matrix="kors", **NO_3KG_CHANGE)(
        ecg, torch.ones(4, 12, dtype=torch.bool))
    torch.testing.assert_close(views, ecg.repeat_interleave(2, dim=0), atol=1e-5, rtol=0)


def test_3kg_dower_keeps_exactly_the_vcg_part_of_the_record() -> None:
    """Dower: 12 -> 3 -> 12 is the projection onto the Dower (dipole) subspace: dipolar records come back
    unchanged, any other comes back as its projection (applying it again changes nothing)."""
    torch.manual_seed(15)
    maker = ECGViewMaker("3kg", 100, LEADS, 150, vcg_matrix="dower", **NO_3KG_CHANGE)
    recorded = torch.ones(4, 12, dtype=torch.bool)
    dipolar = dipolar_12_leads(length=150)
    views, _ = maker(dipolar, recorded)
    torch.testing.assert_close(views, dipolar.repeat_interleave(2, dim=0), atol=1e-5, rtol=0)
    general = consistent_12_leads(length=150)
    projected, _ = maker(general, recorded)
    independent = general[:, [0, 1, 6, 7, 8, 9, 10, 11]].double()
    projection = torch.as_tensor(LEAD_DERIVATION @ DOWER_MATRIX @ np.linalg.pinv(DOWER_MATRIX))
    torch.testing.assert_close(projected, (projection @ independent).float().repeat_interleave(2, dim=0),
                               atol=1e-5, rtol=0)
    assert (projected - general.repeat_interleave(2, dim=0)).abs().amax() > 0.1  # the rest is lost
    again, _ = maker(projected[::2], recorded)
    torch.testing.assert_close(again[::2], projected[::2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("vcg_matrix", ["kors", "dower"])
def test_3kg_rotates_scales_and_masks_both_views_of_one_window(vcg_matrix: str) -> None:
    torch.manual_seed(16)
    ecg = dipolar_12_leads(n=3, length=300)
    views, _ = ECGViewMaker("3kg", 100, LEADS, 100, vcg_matrix=vcg_matrix, mask_ratio=0.3)(
        ecg, torch.ones(3, 12, dtype=torch.bool))
    pairs = views.reshape(3, 2, 12, 100)
    assert ((pairs[:, 0] - pairs[:, 1]).abs().amax(dim=(1, 2)) > 1e-3).all()
    zero_in_every_lead = (views == 0).all(dim=1)  # (views, time)
    for run in zero_in_every_lead:  # one window of 30 samples masked in all leads
        where = run.nonzero()[:, 0]
        assert len(where) == 30 and where[-1] - where[0] == 29
    lead = {name: views[:, i] for i, name in enumerate(LEADS)}
    torch.testing.assert_close(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-5, rtol=0)


def test_3kg_finds_the_standard_leads_by_name_in_any_order() -> None:
    ecg = consistent_12_leads(length=120)
    shuffled = [4, 11, 0, 7, 2, 9, 1, 5, 10, 3, 8, 6]
    names = [LEADS[i].upper() if i % 2 else LEADS[i] for i in shuffled]  # any spelling of the names
    recorded = torch.ones(4, 12, dtype=torch.bool)
    torch.manual_seed(17)
    standard, _ = ECGViewMaker("3kg", 100, LEADS, 120)(ecg, recorded)
    torch.manual_seed(17)
    reordered, _ = ECGViewMaker("3kg", 100, names, 120)(ecg[:, shuffled], recorded)
    torch.testing.assert_close(reordered, standard[:, shuffled], atol=1e-5, rtol=0)


def test_missing_standard_leads_are_named() -> None:
    six = ["I", "II", "III", "aVR", "aVL", "aVF"]
    with pytest.raises(ValueError, match=r"lack \['V1', 'V2', 'V3', 'V4', 'V5', 'V6'\]"):
        ECGViewMaker("3kg", 100, six, 100)
    with pytest.raises(ValueError, match=r"simclr rotation.*lack \['V1'"):
        ECGViewMaker("simclr", 100, six, 100)
    maker = ECGViewMaker("simclr", 100, six, 100, rotation_p=0.0)  # the other augmentations need no lead names
    views, _ = maker(torch.randn(2, 6, 100), torch.ones(2, 6, dtype=torch.bool))
    assert views.shape == (4, 6, 100)


@pytest.mark.parametrize(("kind", "needed"), [("cmsc", 200), ("cmsmlc", 200), ("crop", 100), ("3kg", 100)])
def test_too_short_records_say_their_length_and_what_is_needed(kind: str, needed: int) -> None:
    maker = ECGViewMaker(kind, 100, LEADS, 100)
    with pytest.raises(ValueError, match=f"records of {needed - 1} samples .* at least {needed} samples"):
        maker(torch.randn(2, 12, needed - 1), torch.ones(2, 12, dtype=torch.bool))
    views, _ = maker(torch.randn(2, 12, needed), torch.ones(2, 12, dtype=torch.bool))
    assert views.shape[-1] == 100


def test_lead_views_need_two_recorded_leads() -> None:
    recorded = torch.zeros(3, 12, dtype=torch.bool)
    recorded[:, :2] = True
    recorded[1] = False
    recorded[1, 4] = True
    with pytest.raises(ValueError, match=r"two recorded leads.*records \[1\]"):
        ECGViewMaker("cmlc", 100, LEADS, 50)(torch.randn(3, 12, 100), recorded)


def test_unknown_kinds_and_options_are_named() -> None:
    with pytest.raises(ValueError, match="unknown view kind 'moco'"):
        ECGViewMaker("moco", 100, LEADS, 100)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_angle'\] for view kind 'simclr'"):
        ECGViewMaker("simclr", 100, LEADS, 100, max_angle=10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['jitter_p'\] for view kind 'cmsc'"):
        ECGViewMaker("cmsc", 100, LEADS, 100, jitter_p=0.5)
    with pytest.raises(ValueError, match="vcg_matrix"):
        ECGViewMaker("3kg", 100, LEADS, 100, vcg_matrix="frank")


@pytest.mark.parametrize("kind", VIEW_KINDS)
def test_the_same_torch_seed_gives_the_same_views(kind: str) -> None:
    ecg, recorded = torch.randn(4, 12, 300), torch.ones(4, 12, dtype=torch.bool)
    maker = ECGViewMaker(kind, 100, LEADS, 100)
    torch.manual_seed(18)
    first = maker(ecg, recorded)
    torch.manual_seed(18)
    second = maker(ecg, recorded)
    torch.manual_seed(19)
    other = maker(ecg, recorded)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


# ------------------------------------------------------------------------------------------------ collator

DATASET_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]  # aVF before aVL


def _rows(n: int = 3, length: int = 600, seed: int = 0, **columns: list) -> list[dict]:
    ecg = consistent_12_leads(n=n, length=length, seed=seed).numpy()[:, [LEADS.index(x) for x in DATASET_LEADS]]
    rows = [{"ecg": ecg[i], "lead_mask": np.ones(12, dtype=bool)} for i in range(n)]
    for name, values in columns.items():
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def _collator(kind: str, view_length: int = 100, **options: object) -> SelfSupervisedCollator:
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=view_length, min_length=50)
    views = ECGViewMaker(kind, 100, extractor.lead_names, view_length, **options)
    return SelfSupervisedCollator(extractor, views, DATASET_LEADS, 100)


def test_collator_batches_views_with_ids_and_attributes_repeated_per_view() -> None:
    torch.manual_seed(20)
    attributes = [[1.0, 2.0], [float("nan"), 0.5], [3.0, -1.0]]
    rows = _rows(positive_id=[7, 3, 7], positive_attributes=attributes)
    rows[1]["lead_mask"][DATASET_LEADS.index("V4")] = False  # not recorded in the dataset
    batch = _collator("cmsc")(rows)
    assert batch["input_values"].shape == (6, 12, 100) and batch["input_values"].dtype == torch.float32
    assert batch["time_mask"].shape == (6, 100)
    assert torch.equal(batch["positive_ids"], torch.tensor([7, 7, 3, 3, 7, 7]))
    assert batch["positive_attributes"].dtype == torch.float32
    torch.testing.assert_close(batch["positive_attributes"], torch.tensor(attributes).repeat_interleave(2, dim=0),
                               equal_nan=True)
    expected = torch.ones(6, 12, dtype=torch.bool)
    expected[2:4, LEADS.index("V4")] = False  # the extractor's (standard) order
    assert torch.equal(batch["lead_mask"], expected)
    assert batch["input_values"][2:4, LEADS.index("V4")].abs().sum() == 0


def test_collator_views_are_windows_of_the_normalised_records() -> None:
    """Views are made in millivolts and normalised with each record's statistics: a CLOCS view is exactly a window
    of what the feature extractor returns for the whole record."""
    torch.manual_seed(21)
    rows = _rows(positive_id=[0, 1, 2])
    collator = _collator("cmsc", view_length=150)
    whole = collator.feature_extractor(ecg=np.stack([r["ecg"] for r in rows]), sampling_rate=100,
                                       lead_names=DATASET_LEADS, crop="none")["input_values"]
    views = collator(rows)["input_values"].reshape(3, 2, 12, 150)
    for n in range(3):
        errors = torch.stack([(whole[n, :, s:s + 150] - views[n, 0]).abs().amax() for s in range(600 - 300 + 1)])
        start = int(errors.argmin())
        assert errors[start] < 1e-5
        torch.testing.assert_close(views[n, 1], whole[n, :, start + 150:start + 300], atol=1e-5, rtol=0)
    assert views.std() > 0.5  # z-scored, not millivolts


def test_collator_3kg_without_change_is_the_normalised_record() -> None:
    rows = _rows(positive_id=[0, 1, 2], length=300)
    collator = _collator("3kg", view_length=300, vcg_matrix="kors", **NO_3KG_CHANGE)
    whole = collator.feature_extractor(ecg=np.stack([r["ecg"] for r in rows]), sampling_rate=100,
                                       lead_names=DATASET_LEADS, crop="none")["input_values"]
    views = collator(rows)["input_values"]
    torch.testing.assert_close(views, whole.repeat_interleave(2, dim=0), atol=1e-4, rtol=0)


def test_collator_cmlc_views_hold_one_lead() -> None:
    torch.manual_seed(22)
    batch = _collator("cmlc")(_rows(positive_id=[0, 1, 2]))
    assert torch.equal(batch["lead_mask"].sum(dim=1), torch.ones(6, dtype=torch.long))
    assert (batch["input_values"][~batch["lead_mask"]] == 0).all()


def test_collator_crop_has_one_view_per_record() -> None:
    batch = _collator("crop")(_rows(positive_attributes=[[0.0], [1.0], [2.0]]))
    assert batch["input_values"].shape == (3, 12, 100) and "positive_ids" not in batch
    assert torch.equal(batch["positive_attributes"], torch.tensor([[0.0], [1.0], [2.0]]))


def test_collator_names_the_missing_positive_column() -> None:
    collator = _collator("crop")
    with pytest.raises(ValueError, match="neither a 'positive_id' nor a 'positive_attributes' column"):
        collator(_rows())
    rows = _rows(positive_id=[0, 1, 2])
    del rows[1]["positive_id"]
    with pytest.raises(ValueError, match=r"rows \[1\] of the batch lack the 'positive_id' column"):
        collator(rows)


def test_collator_needs_the_view_maker_of_the_extractor() -> None:
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=100)
    with pytest.raises(ValueError, match="lead_names"):
        SelfSupervisedCollator(extractor, ECGViewMaker("crop", 100, DATASET_LEADS, 100), DATASET_LEADS, 100)
    with pytest.raises(ValueError, match="sampling_rate 250 Hz"):
        SelfSupervisedCollator(extractor, ECGViewMaker("crop", 250, LEADS, 100), DATASET_LEADS, 100)
