"""Imaging studies of the synthetic cohort: the images show what the labels and reports say, the files and the
manifest round-trip through ``cardiomm data synth --imaging``, and a bad manifest fails clearly."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from cli_process import cardiomm_env, describe, run_cardiomm
from scipy import ndimage

from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.data.imaging_studies import (
    IMAGING_LABELS,
    IMAGING_MODALITIES,
    load_imaging_studies,
    read_imaging_file,
    write_angiogram_dicom,
    write_chest_xray_png,
    write_echo_video,
    write_imaging_studies,
)
from cardiomm.synthetic import generate_cohort
from cardiomm.synthetic.cohort import render_imaging_sample
from cardiomm.synthetic.imaging import (
    ANGIOGRAM_SHAPE,
    CHEST_XRAY_SHAPE,
    ECHO_SHAPE,
    FRAME_RATE,
    LUNG_LOBES,
    OCCLUSION_THRESHOLD,
    render_angiogram_run,
    render_chest_xray_image,
    render_echo_clip,
)

CONTRACT_COLUMNS = ["sample_id", "study_id", "patient_id", "split", "modality", "time", "path", "report",
                    *IMAGING_LABELS]


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(n_patients=150, seed=5)


# ------------------------------------------------------------------------------------------------------- echo


def _cavity_area(video: np.ndarray, view: str) -> np.ndarray:
    """Left-ventricular cavity area per frame: the dark component around the darkest point near the cavity centre."""
    smooth = ndimage.uniform_filter(video.astype(float), (1, 3, 3))
    h, w = video.shape[1:]
    col = int(round(((0.16 if view == "A4C" else 0.0) + 1) / 2 * (w - 1)))
    row = int(round((-0.25 + 1) / 2 * (h - 1)))
    areas = []
    for frame in smooth:
        window = ndimage.uniform_filter(frame, 5)[row - 4 : row + 5, col - 3 : col + 4]
        r, c = np.unravel_index(np.argmin(window), window.shape)
        labels, _ = ndimage.label(frame < 30)
        k = labels[row - 4 + r, col - 3 + c]
        areas.append((labels == k).sum() if k else 0)
    return np.array(areas, float)


def _dominant_frequency(series: np.ndarray, fps: float = FRAME_RATE) -> float:
    t = np.arange(len(series)) / fps
    freqs = np.linspace(0.5, 3.0, 501)
    power = np.abs(np.exp(-2j * np.pi * freqs[:, None] * t[None]) @ (series - series.mean()))
    return float(freqs[np.argmax(power)])


def test_echo_cycle_follows_the_heart_rate_and_cavity_area_gives_the_lvef(cohort):
    echo = cohort.imaging[cohort.imaging["modality"] == "echo"].head(60)
    rng = np.random.default_rng(0)
    for view in ("A4C", "A2C"):
        rows = []
        for study in echo.to_dict(orient="records"):
            video = render_imaging_sample(study, view, int(rng.integers(2**62)))
            assert video.shape == ECHO_SHAPE and video.dtype == np.uint8
            area = _cavity_area(video, view)
            rows.append((study["lvef"], 1 - (area.min() / area.max()) ** 1.5, study["heart_rate"] / 60,
                         _dominant_frequency(area), study["irregular_rhythm"]))
        lvef, ef_from_area, f_true, f_seen, irregular = map(np.array, zip(*rows))
        assert np.corrcoef(lvef, ef_from_area)[0, 1] > 0.8, view  # ESV/EDV from the cavity area
        regular = ~irregular.astype(bool)
        assert np.mean(np.abs(f_seen - f_true)[regular] < 0.25) > 0.9, view  # 1800 / HR frames per beat at 30 fps
        assert np.corrcoef(f_seen[regular], f_true[regular])[0, 1] > 0.9, view


def test_echo_beats_are_irregular_in_atrial_fibrillation():
    def beat_lengths(irregular: bool, seed: int) -> np.ndarray:
        video = render_echo_clip(55, 10, 80, seed, "A2C", irregular=irregular, shape=(300, 64, 64))
        area = ndimage.uniform_filter1d(_cavity_area(video, "A2C"), 3)
        systoles: list[int] = []  # end-systole: the smallest cavity within +-6 frames
        for k in range(6, len(area) - 6):
            lowest = area[k] == area[k - 6 : k + 7].min() and area[k] < area.mean()
            if lowest and (not systoles or k - systoles[-1] > 6):
                systoles.append(k)
        return np.diff(systoles) / FRAME_RATE

    regular = np.concatenate([beat_lengths(False, s) for s in range(3)])
    af = np.concatenate([beat_lengths(True, s) for s in range(3)])
    assert abs(np.median(regular) - 60 / 80) < 0.1
    assert np.std(af) / np.mean(af) > 2.5 * np.std(regular) / np.mean(regular)


def _wall_excursion(video: np.ndarray, side: str) -> float:
    """Range over the frames of the mid-ventricular endocardial edge (columns) on one side of an A2C view."""
    smooth = ndimage.uniform_filter(video.astype(float), (1, 3, 3))
    w = video.shape[2]
    centre = (w - 1) // 2
    edges = []
    for frame in smooth:
        per_row = []
        for r in range(int(0.3 * video.shape[1]), int(0.42 * video.shape[1])):
            cols = range(centre, w) if side == "right" else range(centre, -1, -1)
            per_row.append(next((j for j in cols if frame[r, j] >= 30), centre))
        edges.append(np.median(per_row))
    return float(np.ptp(edges))


def test_echo_walls_in_the_infarct_territory_do_not_move():
    for seed in range(3):
        normal = render_echo_clip(55, 10, 70, seed, "A2C")
        anterior = render_echo_clip(55, 10, 70, seed, "A2C", anterior_akinesis=True)  # right wall in A2C
        inferior = render_echo_clip(55, 10, 70, seed, "A2C", inferior_akinesis=True)  # left wall
        right, left = _wall_excursion(normal, "right"), _wall_excursion(normal, "left")
        assert right >= 1 and left >= 1  # both walls move (pixels)
        # the infarcted wall stops, the other walls move more so that the LVEF holds
        assert _wall_excursion(anterior, "right") < min(right, 1.5) and _wall_excursion(anterior, "left") > left
        assert _wall_excursion(inferior, "left") < min(left, 1.5) and _wall_excursion(inferior, "right") > right


def test_echo_pacemaker_lead_is_a_bright_line_in_the_right_ventricle():
    plain = render_echo_clip(45, 11, 72, 3, "A4C")
    paced = render_echo_clip(45, 11, 72, 3, "A4C", pacemaker=True)
    changed = plain != paced
    rows, cols = np.nonzero(changed.any(0))
    assert 20 < changed[0].sum() < 200  # a thin line, not a region
    assert cols.max() < ECHO_SHAPE[2] * 0.45 and np.ptp(rows) > 3 * np.ptp(cols)  # vertical, in the RV (left)
    assert paced[changed].min() > 180
    two_chamber = render_echo_clip(45, 11, 72, 3, "A2C", pacemaker=True)
    assert np.array_equal(render_echo_clip(45, 11, 72, 3, "A2C"), two_chamber)  # the RV is not in that view
    # a fixed detector separates paced from unpaced clips of any patient
    rng = np.random.default_rng(1)
    found = []
    for k in range(40):
        video = render_echo_clip(rng.uniform(20, 70), rng.uniform(8, 16), rng.uniform(50, 120),
                                 int(rng.integers(2**62)), "A4C", pacemaker=k % 2 == 0,
                                 anterior_akinesis=rng.random() < 0.3, irregular=rng.random() < 0.3)
        found.append(((video.min(0)[:, :28] > 150).sum(), k % 2 == 0))
    score, has = map(np.array, zip(*found))
    assert score[has].min() > 10 and score[~has].max() == 0


# -------------------------------------------------------------------------------------------------- angiogram


@pytest.mark.parametrize("artery,view", [("LAD", "LCA RAO caudal"), ("LCx", "LCA RAO caudal"), ("RCA", "RCA LAO")])
def test_angiogram_beyond_a_total_occlusion_never_fills(artery, view):
    j = ["LAD", "LCx", "RCA"].index(artery)
    occluded_stenosis, severe = np.zeros(3), np.zeros(3)
    occluded_stenosis[j], severe[j] = 1.0, 0.85
    for seed in range(3):
        occluded, paths = render_angiogram_run(occluded_stenosis, seed, view, return_paths=True)
        patent = render_angiogram_run(np.zeros(3), seed, view)
        narrowed = render_angiogram_run(severe, seed, view)
        assert occluded.shape == ANGIOGRAM_SHAPE
        path, lesion = paths[artery], int(paths[artery + " lesion"][0])
        h, w = ANGIOGRAM_SHAPE[1:]
        r, c = (np.clip(np.rint(path[:, i]).astype(int), 0, n - 1) for i, n in ((0, h), (1, w)))
        distal = slice(lesion + 4, None)
        proximal = slice(0, max(lesion - 3, 1))

        def along(video, part):
            return video[:, r[part], c[part]].astype(float).mean(1)

        before = along(occluded, distal)[0]  # the first frame precedes the injection
        assert np.abs(along(occluded, distal) - before).max() < 6  # stays background
        assert along(patent, distal).min() < before - 15  # the same artery fills without the occlusion
        assert along(occluded, proximal).min() < along(occluded, proximal)[0] - 15  # filled up to the lesion
        # a severe stenosis lets contrast through, but slower than into the patent artery
        darkening = [before - along(v, distal) for v in (patent, narrowed)]
        assert darkening[1].max() > 10 and darkening[1].sum() < 0.9 * darkening[0].sum()


def test_an_occlusion_is_not_seen_in_the_other_injection():
    lad = np.array([1.0, 0.0, 0.0])
    assert np.array_equal(render_angiogram_run(lad, 7, "RCA LAO"), render_angiogram_run(np.zeros(3), 7, "RCA LAO"))
    assert not np.array_equal(render_angiogram_run(lad, 7, "LCA LAO cranial"),
                              render_angiogram_run(np.zeros(3), 7, "LCA LAO cranial"))


# ------------------------------------------------------------------------------------------------ chest X-ray


def test_chest_xray_findings_change_the_pixels_where_expected():
    h, w = CHEST_XRAY_SHAPE
    for seed in range(3):
        base = render_chest_xray_image(0.45, seed).astype(float)
        edema = render_chest_xray_image(0.45, seed, edema=True).astype(float) - base
        assert edema.min() >= -1 and (edema > 0).mean() > 0.05  # edema adds density
        assert edema[: h // 8].max() <= 1 and edema[:, : w // 16].max() <= 1  # nothing outside the chest
        perihilar = np.r_[edema[100:180, 50:100].ravel(), edema[100:180, 156:206].ravel()]
        assert perihilar.mean() > 15
        for lobe in LUNG_LOBES:
            diff = render_chest_xray_image(0.45, seed, consolidation=lobe).astype(float) - base
            rows, cols = np.nonzero(diff > 10)
            assert len(rows) > 150, lobe
            # the patient's right lung is on the image left
            assert (cols < w / 2).all() if lobe.startswith("right") else (cols > w / 2).all(), lobe
            if "upper" in lobe:
                assert np.median(rows) < 0.55 * h, lobe
            if "lower" in lobe:
                assert np.median(rows) > 0.5 * h, lobe
        device = render_chest_xray_image(0.45, seed, pacemaker=True).astype(float)
        assert (device[: h // 3, w // 2 :] > 225).sum() > 100 and (base[: h // 3, w // 2 :] > 225).sum() == 0
    widths = [(render_chest_xray_image(ctr, 4)[160:172] > 150).sum(1).max() for ctr in (0.4, 0.45, 0.5, 0.55, 0.6)]
    assert np.all(np.diff(widths) > 5), widths  # the cardiac silhouette widens with the cardiothoracic ratio


# ------------------------------------------------------------------------------------------------------ labels


def _stated(report: str, pattern: str) -> bool:
    """Whether a non-negated sentence of ``report`` matches ``pattern``."""
    sentences = [s.strip().lower() for s in re.split(r"[.;]\s+|\.$|\d\.\s", report) if s.strip()]
    denials = ("no ", "without ", "resolution", "interval resolution")
    return any(re.search(pattern, s) for s in sentences if not s.startswith(denials))


def test_study_labels_follow_the_patient_and_the_reports_state_them(cohort):
    studies = cohort.imaging
    patients = cohort.patients.set_index("patient_id")
    implant = patients.loc[studies["patient_id"], "pacemaker_implant"].to_numpy()
    assert np.array_equal(studies["pacemaker"].to_numpy(bool), pd.notna(implant) & (implant <= studies["time"]))
    echo = studies[studies["modality"] == "echo"]
    for r in echo.itertuples():
        assert f"{int(round(r.lvef))}%" in r.report
        assert _stated(r.report, "lead|pacer|pacemaker") == r.pacemaker
    angio = studies[studies["modality"] == "angiogram"]
    assert len(angio) >= 15
    for a in ("LAD", "LCx", "RCA"):
        label = angio[f"{a.lower()}_occlusion"].to_numpy(bool)
        assert np.array_equal(label, angio[f"stenosis_{a}"].to_numpy() >= OCCLUSION_THRESHOLD)
        said = [_stated(t, rf"\b{a.lower()}\b.*(occlusion|occluded)|(occluded|occlusion of).*{_full_name(a)}")
                for t in angio["report"]]
        assert np.array_equal(np.array(said), label), a
    onset = patients.loc[angio["patient_id"], "onset_ami"].to_numpy()
    acute_anterior = pd.notna(onset) & (angio["time"].to_numpy() - onset <= np.timedelta64(7, "D"))
    acute_anterior &= pd.notna(onset) & (onset <= angio["time"].to_numpy())
    assert acute_anterior.any() and (angio["stenosis_LAD"].to_numpy()[acute_anterior] >= 0.9).all()
    xray = studies[studies["modality"] == "chest_xray"]
    for r in xray.itertuples():
        assert _stated(r.report, "edema") == r.edema, r.report
        assert _stated(r.report, "consolidation") == r.consolidation, r.report
        assert _stated(r.report, "cardiomegaly|enlarged") == r.cardiomegaly == (r.cardiothoracic_ratio > 0.5)
        assert _stated(r.report, "pacemaker") == r.pacemaker
    prevalence = {k: float(xray[k].mean()) for k in ("edema", "consolidation", "cardiomegaly")}
    assert 0.02 < prevalence["edema"] < 0.3 and 0.02 < prevalence["consolidation"] < 0.2, prevalence
    assert 0.02 < prevalence["cardiomegaly"] < 0.4, prevalence


def _full_name(artery: str) -> str:
    return {"LAD": "left anterior descending", "LCx": "left circumflex", "RCA": "right coronary"}[artery]


# --------------------------------------------------------------------------------------------- files + manifest


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_writes_imaging_files_and_a_manifest_that_round_trip(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run = run_cardiomm("data", "synth", "--imaging", "--patients", "30", "--seed", "2", "--no-wfdb",
                           "--out", out, timeout=600)
        assert run.returncode == 0, describe(run)
        assert "imaging:" in run.stdout and "studies" in run.stdout
    out = outs[0]
    raw = pd.read_parquet(out / "imaging" / "studies.parquet")
    assert set(CONTRACT_COLUMNS) <= set(raw.columns)
    assert set(raw["modality"]) == set(IMAGING_MODALITIES)
    # same seed -> identical manifest and file bytes
    pd.testing.assert_frame_equal(raw, pd.read_parquet(outs[1] / "imaging" / "studies.parquet"))
    assert _digest(out / "imaging") == _digest(outs[1] / "imaging")
    studies = load_imaging_studies(out)
    assert len(studies) == len(raw) and all(p.startswith(str(out.resolve())) for p in studies["path"])
    # every file reads back to its shape with the reader of its format
    import av
    import pydicom
    from PIL import Image

    for row in studies.itertuples():
        if row.modality == "echo":
            with av.open(row.path) as container:
                frames = np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])
            assert frames.shape == ECHO_SHAPE
        elif row.modality == "angiogram":
            assert pydicom.dcmread(row.path).pixel_array.shape == ANGIOGRAM_SHAPE
        else:
            with Image.open(row.path) as image:
                assert image.size == CHEST_XRAY_SHAPE[::-1] and image.mode == "L"
    # the files hold exactly what the cohort renders (lossless codecs, one seed per sample)
    cohort = generate_cohort(n_patients=30, seed=2)
    study_rows = cohort.imaging.set_index("study_id")
    for modality in IMAGING_MODALITIES:
        sample = cohort.imaging_samples[cohort.imaging_samples["modality"] == modality].iloc[0]
        study = {"study_id": sample["study_id"], **study_rows.loc[sample["study_id"]].to_dict()}
        expected = render_imaging_sample(study, sample["view"], int(sample["seed"]))
        assert np.array_equal(read_imaging_file(out / "imaging" / sample["path"]), expected), modality
    # labels apply to their modality only; several samples per study share report and labels
    for modality, labels in {"echo": ["lvef"], "angiogram": ["lad_occlusion", "rca_occlusion", "lcx_occlusion"],
                             "chest_xray": ["consolidation", "edema", "cardiomegaly"]}.items():
        part = studies[studies["modality"] == modality]
        assert part[labels].notna().all().all() and part[[c for c in IMAGING_LABELS if c not in labels
                                                          and c != "pacemaker"]].isna().all().all()
    assert studies["pacemaker"].isin([0.0, 1.0]).all()
    shared = studies.groupby("study_id")[["report", "split", *IMAGING_LABELS]].nunique(dropna=False)
    assert (shared <= 1).all().all() and (studies.groupby("study_id").size() > 1).any()
    # the split is the patient's split in the ECG dataset, whose rows hold no image arrays
    dataset, _ = load_ecg_dataset(out)
    split_of = {pid: name for name, part in dataset.items() for pid in part["patient_id"]}
    assert (studies["patient_id"].map(split_of) == studies["split"]).all()
    assert not {"echo", "angiogram", "chest_xray"} & set(dataset["train"].column_names)
    assert "pacemaker" in dataset["train"].column_names


_LOAD_EACH = """
import sys
from cardiomm.data.imaging_studies import load_imaging_studies
for folder in sys.argv[1:]:
    try:
        load_imaging_studies(folder)
        print("loaded")
    except ValueError as err:
        print("ValueError:", err)
"""


def _load_in_a_fresh_process(*folders) -> list[str]:
    """What ``load_imaging_studies`` says about each folder, in a new Python process."""
    run = subprocess.run([sys.executable, "-c", _LOAD_EACH, *map(str, folders)], capture_output=True, text=True,
                         env=cardiomm_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()


def test_load_imaging_studies_fails_clearly_on_a_bad_manifest(tmp_path):
    folder = tmp_path / "ds" / "imaging"
    image = np.zeros((8, 8), np.uint8)
    paths = [write_chest_xray_png(folder / "chest_xray" / f"x{k}.png", image) for k in range(4)]
    table = pd.DataFrame({
        "sample_id": [f"x{k}" for k in range(4)], "study_id": ["s0", "s0", "s1", "s2"],
        "patient_id": ["p0", "p0", "p1", "p2"], "split": ["train", "train", "test", "test"],
        "modality": "chest_xray", "time": pd.to_datetime(["2020-01-01"] * 4),
        "path": [f"chest_xray/x{k}.png" for k in range(4)], "report": "Normal heart size.", "edema": 0.0,
    })
    manifest = write_imaging_studies(table, tmp_path / "ds")
    assert len(load_imaging_studies(tmp_path / "ds")) == 4
    # four broken copies: no manifest, a missing column, an unknown modality, missing image files
    broken = {name: tmp_path / name / "imaging" for name in ("nothing", "column", "modality", "files")}
    for name, path in broken.items():
        if name != "nothing":
            (path / "chest_xray").mkdir(parents=True)
    for k, p in enumerate(paths):
        write_chest_xray_png(broken["column"] / "chest_xray" / p.name, image)
        write_chest_xray_png(broken["modality"] / "chest_xray" / p.name, image)
        if k == 0:
            write_chest_xray_png(broken["files"] / "chest_xray" / p.name, image)
    table.drop(columns=["split"]).to_parquet(broken["column"] / "studies.parquet")
    table.assign(modality=["chest_xray", "mri", "chest_xray", "chest_xray"]).to_parquet(
        broken["modality"] / "studies.parquet")
    table.to_parquet(broken["files"] / "studies.parquet")
    *lines, good = _load_in_a_fresh_process(*(tmp_path / name for name in broken), tmp_path / "ds")
    said = dict(zip(broken, lines))
    assert all(line.startswith("ValueError: ") for line in said.values()), said
    assert str(broken["nothing"] / "studies.parquet") in said["nothing"] and "no imaging manifest" in said["nothing"]
    assert str(broken["column"] / "studies.parquet") in said["column"] and "missing columns ['split']" in said["column"]
    assert str(broken["modality"] / "studies.parquet") in said["modality"]
    assert "unknown modality ['mri']" in said["modality"]
    assert str(broken["files"] / "studies.parquet") in said["files"]
    assert "3 of 4 image files are missing" in said["files"] and "x1.png" in said["files"]
    assert manifest.is_file() and good == "loaded"


def test_a_manifest_of_user_files_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    echo = rng.integers(0, 256, (33, 20, 24), dtype=np.uint8)
    angio = rng.integers(0, 256, (32, 16, 16), dtype=np.uint8)
    xray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    files = [write_echo_video(tmp_path / "mine" / "clip.avi", echo),
             write_angiogram_dicom(tmp_path / "mine" / "run.dcm", angio, "p1", "s2", "r1",
                                   time=pd.Timestamp("2021-03-04")),
             write_chest_xray_png(tmp_path / "elsewhere" / "cxr.png", xray)]
    table = pd.DataFrame({
        "sample_id": ["e1", "a1", "x1"], "study_id": ["s1", "s2", "s3"], "patient_id": ["p1"] * 3,
        "split": ["train"] * 3, "modality": ["echo", "angiogram", "chest_xray"],
        "time": pd.to_datetime(["2021-03-01", "2021-03-04", "2021-03-05"]), "path": [str(f) for f in files],
        "report": ["LVEF 55%.", "LAD had an occlusion.", "Pulmonary edema."], "lvef": [55.0, np.nan, np.nan],
        "lad_occlusion": [np.nan, 1.0, np.nan], "edema": [np.nan, np.nan, 1.0], "view": ["A4C", "RCA LAO", "PA"],
    })
    write_imaging_studies(table, tmp_path / "mine")  # the manifest goes to mine/imaging/
    loaded = load_imaging_studies(tmp_path / "mine")
    assert list(loaded["sample_id"]) == ["e1", "a1", "x1"] and list(loaded["view"]) == ["A4C", "RCA LAO", "PA"]
    assert loaded["cardiomegaly"].isna().all() and loaded.loc[1, "lad_occlusion"] == 1.0
    for path, pixels in zip(loaded["path"], (echo, angio, xray)):
        assert np.array_equal(read_imaging_file(path), pixels)  # lossless writers
    with pytest.raises(ValueError, match="must be 0, 1 or missing"):
        write_imaging_studies(table.assign(edema=[np.nan, np.nan, 2.0]), tmp_path / "mine")


def test_cli_replaces_its_own_imaging_and_refuses_foreign_files(tmp_path):
    out = tmp_path / "synth"
    run = run_cardiomm("data", "synth", "--imaging", "--patients", "6", "--no-wfdb", "--out", out)
    assert run.returncode == 0, describe(run)
    first = set(load_imaging_studies(out)["path"])
    run = run_cardiomm("data", "synth", "--imaging", "--patients", "3", "--seed", "1", "--no-wfdb", "--out", out)
    assert run.returncode == 0, describe(run)
    second = load_imaging_studies(out)
    assert set(second["patient_id"]) <= {f"P{k:06d}" for k in range(3)}
    on_disk = {str(p.resolve()) for p in (out / "imaging").rglob("*") if p.is_file() and p.suffix != ".parquet"}
    assert on_disk == set(second["path"]) and first - on_disk  # no file of the earlier cohort outlives it
    foreign = tmp_path / "mine" / "imaging" / "echo" / "clip.avi"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    run = run_cardiomm("data", "synth", "--imaging", "--patients", "4", "--out", tmp_path / "mine")
    assert run.returncode == 2 and "refusing to overwrite" in run.stderr, describe(run)
    assert foreign.read_bytes() == b"not ours" and not (tmp_path / "mine" / "data").exists()
