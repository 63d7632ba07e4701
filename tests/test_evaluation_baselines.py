"""``cardiomm evaluate --baseline``: ECG-only encoders evaluated next to an ECG–text model, run as the user runs it.

One module fixture saves a tiny ECG–text checkpoint (its ECG tower moved away from the seed-0 initialisation, so
that it differs from the random baseline), a small synthetic cohort, an ECG encoder folder whose feature extractor
differs from the model's (50 Hz, 5-s crops of 250 samples) and a few broken baseline folders, then runs
``cardiomm evaluate --baseline enc=DIR --baseline random`` and every error case, a few processes at a time. The
baselines' linear-probe figures are checked against logistic regressions fitted here with scikit-learn on
embeddings computed here from the saved encoder (not through ``cardiomm.evaluation``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from transformers import HubertConfig, HubertModel

from cardiomm.data.ecg_dataset import label_column, load_ecg_dataset
from cardiomm.data.splits import stratified_fraction
from cardiomm.evaluation.clerc_report import CLERC_MODEL_TYPE
from cardiomm.evaluation.metrics import as_multi_hot
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cli_process import describe
from test_cli_evaluate_push import cardiomm, make_synthetic_dataset, save_tiny_checkpoint

TASK = "rhythm"
SPLITS = ("train", "validation", "test")
MISSING_MODEL = "no-such-model"  # error cases name this model: their error must come before it is loaded


def tiny_encoder_folder(folder: Path) -> Path:
    """A small 1D-ResNet ECG encoder with a feature extractor unlike the model's: 50 Hz, 250-sample crops."""
    torch.manual_seed(1)
    config = ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 8, 16], stage_depths=[1, 1, 1],
                              stage_kernel_sizes=[5, 3, 3], stage_strides=[2, 2, 2])
    ECGEncoderModel(config).save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=50, crop_length=250, window_stride=50, num_windows=6).save_pretrained(folder)
    return folder


def hubert_folder(folder: Path) -> Path:
    """A loadable checkpoint (a transformers audio model) with an ECG feature extractor: no ECG pooler_output."""
    HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                             conv_dim=(8, 8), conv_kernel=(3, 3), conv_stride=(2, 2), num_conv_pos_embeddings=4,
                             num_conv_pos_embedding_groups=2)).save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=500).save_pretrained(folder)
    return folder


def error_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra ``evaluate`` arguments, phrases the one error line must hold)."""
    enc = root / "enc"
    empty = root / "empty"
    empty.mkdir()
    hubert = hubert_folder(root / "hubert")
    clerc = root / "clerc"
    clerc.mkdir()
    (clerc / "config.json").write_text(json.dumps({"model_type": CLERC_MODEL_TYPE}))
    missing = root / "no-such-encoder"
    return {
        "no equals sign": (["--baseline", "enc"], ["--baseline 'enc'", "NAME=FOLDER"]),
        "empty name": (["--baseline", f"={enc}"], ["name before '=' is empty"]),
        "duplicate name": (["--baseline", f"a={enc}", "--baseline", f"a={enc}"], ["'a' is given twice"]),
        "missing folder": (["--baseline", f"a={missing}"], [str(missing), "no such checkpoint folder"]),
        "empty folder": (["--baseline", f"a={empty}"],
                         [str(empty), "config.json", "weights", "preprocessor_config.json"]),
        "no pooler_output": (["--baseline", f"a={hubert}"], [str(hubert), "HubertModel", "no pooler_output"]),
        "partial leads": (["--leads", "1..3", "--baseline", "random"],
                          ["--baseline", "not applicable", "partial-lead"]),
        "merl protocol": (["--protocol", "merl", "--baseline", "random"],
                          ["--baseline", "not applicable", "--protocol merl"]),
        "clerc": (["--model", str(clerc), "--baseline", f"a={enc}"],
                  ["--baseline", "not applicable to the CLERC checkpoint", str(clerc)]),
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("baselines")
    checkpoint = save_tiny_checkpoint(root / "tiny-merl")
    model = ECGTextDualEncoder.from_pretrained(checkpoint)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # "trained": no longer the seed-0 initialisation the random baseline draws
        for parameter in model.ecg_model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(checkpoint)
    data = make_synthetic_dataset(root / "synth")
    tiny_encoder_folder(root / "enc")
    out = root / "evaluation"
    runs = {"main": ["--model", str(checkpoint), "--baseline", f"enc={root / 'enc'}", "--baseline", "random",
                     "--out", str(out)]}
    cases = error_cases(root)
    runs.update({name: ["--model", MISSING_MODEL, *args] for name, (args, _) in cases.items()})

    def run(name: str):
        cwd = root / "cwd" / name.replace(" ", "-")
        cwd.mkdir(parents=True)
        return cardiomm(["evaluate", "--data", str(data), "--tasks", TASK, *runs[name]], cwd, timeout=400)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(runs, pool.map(run, runs)))
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    return SimpleNamespace(root=root, checkpoint=checkpoint, data=data, out=out, main=done["main"],
                           results=results, errors={name: (done[name], cases[name][1]) for name in cases})


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``markdown``."""
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|-")]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[1:] if len(row) == len(cells[0])]


def embed(model: torch.nn.Module, extractor: ECGFeatureExtractor, split, sampling_rate: float,
          lead_names: list[str]) -> np.ndarray:
    """L2-normalised ``pooler_output`` of every ECG of ``split``, centre crop, recorded leads only."""
    inputs = extractor(ecg=np.asarray(split["ecg"]), sampling_rate=sampling_rate, crop="center",
                       lead_names=lead_names, return_tensors="pt")
    lead_mask = inputs["lead_mask"] & torch.as_tensor(np.asarray(split["lead_mask"]), dtype=torch.bool)
    with torch.no_grad():
        pooled = model.eval()(input_values=inputs["input_values"], lead_mask=lead_mask,
                              time_mask=inputs["time_mask"]).pooler_output.double().numpy()
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def direct_probe(probe: dict, features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """Every run of ``probe`` (results.json) equals scikit-learn's logistic regression fitted here at its C on the
    same subset of train: validation and test macro AUROC over the classes with both label values."""
    for run in probe["runs"]:
        idx = stratified_fraction(labels["train"], run["fraction"], seed=run["seed"])
        assert len(idx) == run["n_train"]
        assert run["C"] in probe["Cs"] and run["val_macro_auroc"] == pytest.approx(max(run["val_macro_auroc_by_C"]))
        scaler = StandardScaler().fit(features["train"][idx])
        macro = {}
        for split in ("validation", "test"):
            aurocs = []
            for j in range(labels["train"].shape[1]):
                y_sub, y_eval = labels["train"][idx, j], labels[split][:, j]
                if y_eval.min() == y_eval.max():
                    continue
                if y_sub.min() == y_sub.max():
                    scores = np.zeros(len(y_eval))
                else:
                    fit = LogisticRegression(C=run["C"], max_iter=1000).fit(scaler.transform(features["train"][idx]),
                                                                            y_sub)
                    scores = fit.decision_function(scaler.transform(features[split]))
                aurocs.append(roc_auc_score(y_eval, scores))
            macro[split] = float(np.mean(aurocs))
        assert macro["validation"] == pytest.approx(run["val_macro_auroc"], abs=1e-6), run
        assert macro["test"] == pytest.approx(run["test_macro_auroc"], abs=1e-6), run


def dataset_labels(data: Path, probe: dict):
    dataset, info = load_ecg_dataset(data)
    dataset = {split: dataset[split].with_format("numpy") for split in SPLITS}
    names = list(info.tasks[TASK])
    columns = [names.index(name) for name in probe["label_names"]]
    labels = {split: as_multi_hot(np.asarray(dataset[split][label_column(TASK)]), len(names))[:, columns]
              for split in SPLITS}
    return dataset, info, labels


def test_baselines_get_the_models_linear_probe_runs_and_retrieval(evaluated: SimpleNamespace) -> None:
    assert evaluated.main.returncode == 0, describe(evaluated.main)
    results = evaluated.results
    assert list(results["baselines"]) == ["enc", "random"]
    model_entry = results["tasks"][TASK]
    model_probe = model_entry["linear_probe_pretrained"]
    model_runs = [(run["fraction"], run["seed"], run["n_train"]) for run in model_probe["runs"]]
    assert len(model_runs) == 9  # 1 / 10 / 100 % x seeds 0, 1, 2
    for name, baseline in results["baselines"].items():
        entry = baseline["tasks"][TASK]
        probe = entry["linear_probe"]
        assert [(run["fraction"], run["seed"], run["n_train"]) for run in probe["runs"]] == model_runs, name
        assert probe["label_names"] == model_probe["label_names"] and probe["Cs"] == model_probe["Cs"]
        assert set(probe["summary"]) == set(model_probe["summary"]) == {"0.01", "0.1", "1.0"}
        assert set(entry) == {"linear_probe", "ecg_to_ecg_precision_at_k"}  # no zero-shot, no text retrieval
        assert entry["ecg_to_ecg_precision_at_k"].keys() == model_entry["ecg_to_ecg_precision_at_k"].keys()
    enc, random = results["baselines"]["enc"], results["baselines"]["random"]
    assert enc["feature_extractor"] == "its own" and enc["preprocessing"]["sampling_rate"] == 50
    assert any(item.startswith("sampling_rate 50") for item in enc["preprocessing_differs_from_model"])
    assert random["feature_extractor"] == "the model's" and random["preprocessing_differs_from_model"] == []
    assert "seed 0" in random["source"]


def test_encoder_baseline_numbers_are_a_direct_logistic_regression_on_its_own_embeddings(
    evaluated: SimpleNamespace,
) -> None:
    assert evaluated.main.returncode == 0, describe(evaluated.main)
    probe = evaluated.results["baselines"]["enc"]["tasks"][TASK]["linear_probe"]
    dataset, info, labels = dataset_labels(evaluated.data, probe)
    model = ECGEncoderModel.from_pretrained(evaluated.root / "enc")
    extractor = ECGFeatureExtractor.from_pretrained(evaluated.root / "enc")  # its own: 50 Hz, 250 samples
    features = {split: embed(model, extractor, dataset[split], info.sampling_rate, info.lead_names)
                for split in SPLITS}
    direct_probe(probe, features, labels)


def test_random_baseline_is_the_models_ecg_tower_architecture_with_seed_0_weights(
    evaluated: SimpleNamespace,
) -> None:
    assert evaluated.main.returncode == 0, describe(evaluated.main)
    probe = evaluated.results["baselines"]["random"]["tasks"][TASK]["linear_probe"]
    dataset, info, labels = dataset_labels(evaluated.data, probe)
    tower = ECGTextDualEncoder.from_pretrained(evaluated.checkpoint).ecg_model
    torch.manual_seed(0)
    random_tower = ECGEncoderModel(tower.config)
    assert not torch.equal(next(random_tower.parameters()), next(tower.parameters()))
    extractor = ECGFeatureExtractor.from_pretrained(evaluated.checkpoint)  # the model's: 100 Hz, 500 samples
    features = {split: embed(random_tower, extractor, dataset[split], info.sampling_rate, info.lead_names)
                for split in SPLITS}
    direct_probe(probe, features, labels)


def test_table_shows_each_baseline_next_to_the_model(evaluated: SimpleNamespace) -> None:
    assert evaluated.main.returncode == 0, describe(evaluated.main)
    results = evaluated.results
    for text in (evaluated.main.stdout, (evaluated.out / "results.md").read_text()):
        rows = table_rows(text)
        probe_rows = [row for row in rows if row["protocol"] == "linear probe"]
        labels = {"pretrained": results["tasks"][TASK]["linear_probe_pretrained"]}
        labels.update({baseline["label"]: baseline["tasks"][TASK]["linear_probe"]
                       for baseline in results["baselines"].values()})
        assert list(labels) == ["pretrained", "baseline: enc (own preprocessing)", "baseline: random"]
        for label, probe in labels.items():
            shown = {row["fraction"]: row["result"] for row in probe_rows if row["encoder"] == label}
            expected = {f"{float(f):.0%}": f"{s['mean']:.3f} ± {s['std']:.3f}" for f, s in probe["summary"].items()}
            assert shown == expected, label
        baseline_protocols = {row["protocol"] for row in rows if row["encoder"].startswith("baseline: ")}
        assert "linear probe" in baseline_protocols and any(p.startswith("ECG→ECG") for p in baseline_protocols)
        assert not any("zero-shot" in p or "text→ECG" in p for p in baseline_protocols)
        assert "its preprocessing differs from the model's: sampling_rate 50 (model: 100)" in text
        assert "with random weights (seed 0)" in text


@pytest.mark.parametrize("case", [
    "no equals sign", "empty name", "duplicate name", "missing folder", "empty folder",
    "no pooler_output", "partial leads", "merl protocol", "clerc",
])
def test_bad_baseline_exits_2_naming_the_problem_before_the_model_is_loaded(
    evaluated: SimpleNamespace, case: str
) -> None:
    run, phrases = evaluated.errors[case]
    assert run.returncode == 2, describe(run)
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("cardiomm: error: ")]
    assert len(errors) == 1, run.stderr
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    assert MISSING_MODEL not in errors[0]  # the baseline is refused before the (missing) model is looked at
