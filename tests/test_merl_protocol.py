"""MERL's own evaluation protocols (``cardiomm.evaluation.merl_protocol``, ``cardiomm evaluate --protocol merl``).

Metrics against hand-computed examples, the learning-rate schedule as MERL steps it, the probe's batch norms in
training mode on a copy of the ECG tower, prompt-file errors, and ``cardiomm evaluate --protocol both`` in a
subprocess on a tiny saved dual encoder and a synthetic cohort built with ``cardiomm data synth``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer, BertConfig

from cli_process import describe, run_cardiomm
from test_cli_evaluate_push import MINILM_PATH, save_tiny_checkpoint

from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.evaluation.checkpoint import load_ecg_text_checkpoint
from cardiomm.evaluation.merl_protocol import (
    DIFFERENCES_FROM_CARDIOMM_PROTOCOL,
    load_merl_prompts,
    merl_classification_metrics,
    merl_learning_rate,
    merl_linear_probe,
    merl_probe_optimizer,
    merl_training_subset,
    merl_zero_shot,
)
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_text import ECGTextProcessor

# ------------------------------------------------------------------------------------------------------ metrics


def test_metrics_match_hand_computed_values() -> None:
    # class 0: positives scored 0.4, 0.35, 0.9; negatives 0.1, 0.8
    #   AUROC = 4 of 6 positive-negative pairs ordered = 66.67
    #   thresholds 0.1 / 0.35 / 0.4 / 0.8 / 0.9 give F1 0.75 / 6/7 / 2/3 / 0.4 / 0.5 -> max F1 6/7 at 0.35
    #   accuracy with score > 0.35: predicted positive 0.4 (pos), 0.8 (neg), 0.9 (pos) -> 3 of 5 right = 60
    #   (with score >= 0.35 it would be 80: the ECG at the threshold counts as negative, as in MERL)
    # class 1: perfectly separated -> AUROC 100, F1 100, threshold 0.6, accuracy with > 0.6: 0.6 is a
    #   positive predicted negative -> 4 of 5 = 80
    # class 2: no positive -> left out of every average
    y = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
    scores = np.array([[0.1, 0.2, 0.5], [0.4, 0.1, 0.1], [0.35, 0.6, 0.2], [0.8, 0.9, 0.3], [0.9, 0.3, 0.4]])
    m = merl_classification_metrics(y, scores, ["a", "b", "c"])
    assert m.left_out == ["c"] and set(m.auroc) == {"a", "b"}
    assert m.auroc["a"] == pytest.approx(400 / 6)
    assert m.f1["a"] == pytest.approx(600 / 7)
    assert m.threshold["a"] == pytest.approx(0.35)
    assert m.accuracy["a"] == pytest.approx(60.0)
    assert (m.auroc["b"], m.f1["b"], m.threshold["b"], m.accuracy["b"]) == pytest.approx((100.0, 100.0, 0.6, 80.0))
    assert m.macro_auroc == pytest.approx((400 / 6 + 100) / 2)
    assert m.macro_f1 == pytest.approx((600 / 7 + 100) / 2)
    assert m.macro_accuracy == pytest.approx(70.0)


def test_auroc_with_ties_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(40, 3))
    scores = rng.integers(0, 4, size=(40, 3)).astype(float)  # many ties
    m = merl_classification_metrics(y, scores)
    for j in range(3):
        assert m.auroc[str(j)] == pytest.approx(100 * roc_auc_score(y[:, j], scores[:, j]))


# ------------------------------------------------------------------------------------------------- the schedule


def test_learning_rate_drops_after_40_scheduler_steps() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler = merl_probe_optimizer([weight], learning_rate=1e-3, weight_decay=1e-4)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(100):
        weight.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == rates[39] == pytest.approx(1e-3)
    assert rates[40] == rates[100] == pytest.approx(1e-4)  # one drop only
    assert rates == pytest.approx([merl_learning_rate(k) for k in range(101)])
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_training_subset_is_sklearns_unstratified_split() -> None:
    from sklearn.model_selection import train_test_split

    assert merl_training_subset(50, 100).tolist() == list(range(50))
    expected, _ = train_test_split(np.arange(200), train_size=0.1, random_state=42)
    assert merl_training_subset(200, 10).tolist() == expected.tolist()
    assert len(merl_training_subset(200, 1)) == 2
    with pytest.raises(ValueError, match="less than one ECG"):
        merl_training_subset(58, 1)
    with pytest.raises(ValueError, match="1 to 100"):
        merl_training_subset(58, 0)


# -------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic patients (91 / 8 / 9 ECGs in train / validation / test), built by the command."""
    out = tmp_path_factory.mktemp("merl") / "synth"
    run = run_cardiomm("data", "synth", "--n-patients", "40", "--out", out, "--no-wfdb", timeout=300)
    assert run.returncode == 0, describe(run)
    return out


@pytest.fixture(scope="module")
def dataset(dataset_dir: Path):
    data, info = load_ecg_dataset(dataset_dir)
    return DatasetDict({k: v.with_format("numpy") for k, v in data.items()}), info


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("merl") / "tiny-vit")


def tiny_resnet_model() -> tuple[ECGTextDualEncoder, ECGTextProcessor]:
    """A tiny ECG-text dual encoder whose ECG tower is a 2-stage ResNet (batch norms), with its processor."""
    torch.manual_seed(0)
    config = ECGTextDualEncoderConfig(
        ecg_config=ECGEncoderConfig(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 16],
                                    stage_depths=[1, 1], stage_kernel_sizes=[3, 3], stage_strides=[1, 2]),
        text_config=BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=128),
        projection_dim=16, projection_hidden_size=24,
    )
    processor = ECGTextProcessor(ECGFeatureExtractor(sampling_rate=100, crop_length=500),
                                 AutoTokenizer.from_pretrained(MINILM_PATH), max_text_length=64)
    return ECGTextDualEncoder(config).eval(), processor


# ------------------------------------------------------------------------------------------ the probe's BN mode


def test_probe_runs_batch_norms_in_training_mode_on_a_copy(dataset) -> None:
    data, info = dataset
    model, processor = tiny_resnet_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    result = merl_linear_probe(model, processor, data, info, "rhythm", 100, epochs=2, batch_size=16)

    assert result.features_recomputed_every_epoch
    assert result.batches_per_epoch == 6 and result.train_size == len(data["train"]) == 91
    probed = dict(result.backbone.named_modules())
    for name, module in model.ecg_model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            copy = probed[name]
            # one running-statistics update per training batch, none from the eval-mode scoring
            assert int(copy.num_batches_tracked) == int(module.num_batches_tracked) + 2 * 6, name
            assert not torch.allclose(copy.running_mean, module.running_mean), name
    # the model passed in is untouched: weights, statistics, modes and requires_grad
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert all(p.requires_grad for p in model.parameters())
    assert all(not p.requires_grad for p in result.backbone.parameters())
    assert np.isfinite(result.max_test_auroc) and result.max_test_auroc == max(
        h["test_auroc"] for h in result.history)


def test_probe_steps_the_schedule_after_every_batch_and_every_epoch(dataset) -> None:
    data, info = dataset
    model, processor = tiny_resnet_model()
    result = merl_linear_probe(model, processor, data, info, "rhythm", 100, epochs=5, batch_size=8)
    per_epoch = result.batches_per_epoch + 1  # scheduler steps per epoch
    assert result.batches_per_epoch == 12
    for epoch, entry in enumerate(result.history):
        assert entry["learning_rate_first_batch"] == pytest.approx(merl_learning_rate(epoch * per_epoch))
        assert entry["learning_rate_last_batch"] == pytest.approx(
            merl_learning_rate(epoch * per_epoch + result.batches_per_epoch - 1))
    # 13 steps per epoch: epoch 3 starts after 39 steps, so its first batch runs at 1e-3 and the rest at 1e-4
    assert result.history[3]["learning_rate_first_batch"] == pytest.approx(1e-3)
    assert result.history[3]["learning_rate_last_batch"] == pytest.approx(1e-4)


def test_a_tower_without_batch_norm_or_dropout_is_embedded_once(checkpoint: Path, dataset, tmp_path: Path) -> None:
    data, info = dataset
    model, processor = load_ecg_text_checkpoint(checkpoint)  # ViT without dropout: same output in either mode
    result = merl_linear_probe(model, processor, data, info, "rhythm", 10, epochs=2, batch_size=16)
    assert not result.features_recomputed_every_epoch and result.train_size == 9
    # with dropout the training-mode features differ, so they are recomputed every epoch as MERL does
    config = json.loads((checkpoint / "config.json").read_text())
    config["ecg_config"]["dropout"] = 0.1
    folder = tmp_path / "tiny-vit-dropout"
    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    with_dropout, _ = load_ecg_text_checkpoint(folder)
    assert merl_linear_probe(with_dropout, processor, data, info, "rhythm", 10, epochs=1,
                             batch_size=16).features_recomputed_every_epoch


# ---------------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"NORM": "normal ecg",', "not valid JSON"),
        ('["normal ecg"]', "JSON object"),
        ('{"NORM": ["normal ecg", "sinus rhythm"]}', "one non-empty string"),
        ('{"NORM": ""}', "one non-empty string"),
    ],
)
def test_bad_prompt_files_are_errors_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_merl_prompts(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="no such prompt file"):
        load_merl_prompts(tmp_path / "missing.json")


def write_prompts(info, path: Path, drop: str | None = None) -> dict[str, str]:
    """A MERL-format prompt file with one made-up prompt per class of every task (``drop``: leave one out)."""
    classes = sorted({c for names in info.tasks.values() for c in names} - {drop})
    prompts = {c: f"Findings: {c.upper()}, an ECG showing {c}." for c in classes}
    path.write_text(json.dumps(prompts))
    return prompts


def test_cli_prompt_file_errors(checkpoint: Path, dataset_dir: Path, dataset, tmp_path: Path) -> None:
    _, info = dataset
    bad = tmp_path / "bad.json"
    bad.write_text('{"sinus rhythm": 3}')
    base = ["evaluate", "--model", checkpoint, "--data", dataset_dir, "--out", tmp_path / "out"]
    run = run_cardiomm(*base, "--protocol", "merl", "--prompts", bad, cwd=tmp_path)
    assert run.returncode == 2, describe(run)
    assert f"cardiomm: error: {bad}" in run.stderr and "non-empty string" in run.stderr

    partial = tmp_path / "partial.json"
    write_prompts(info, partial, drop="atrial flutter")
    run = run_cardiomm(*base, "--protocol", "merl", "--prompts", partial, "--tasks", "rhythm", cwd=tmp_path)
    assert run.returncode == 2, describe(run)
    assert str(partial) in run.stderr and "'atrial flutter'" in run.stderr and "rhythm" in run.stderr
    assert not (tmp_path / "out" / "results.json").exists()

    run = run_cardiomm(*base, "--prompts", partial, cwd=tmp_path)  # the cardiomm protocol takes no prompt file
    assert run.returncode == 2 and "--protocol merl" in run.stderr, describe(run)


# -------------------------------------------------------------------------------------------------------- CLI


def test_evaluate_both_protocols(checkpoint: Path, dataset_dir: Path, dataset, tmp_path: Path) -> None:
    data, info = dataset
    prompts = write_prompts(info, tmp_path / "prompts.json")
    out = tmp_path / "evaluation"
    run = run_cardiomm("evaluate", "--model", checkpoint, "--data", dataset_dir, "--out", out, "--protocol", "both",
                       "--prompts", tmp_path / "prompts.json", "--probe-epochs", "2", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    results = json.loads((out / "results.json").read_text())
    assert results["protocols"] == ["cardiomm", "merl"]
    assert results["differences_from_cardiomm_protocol"] == list(DIFFERENCES_FROM_CARDIOMM_PROTOCOL)
    assert any("TEST set" in d for d in results["differences_from_cardiomm_protocol"])

    cardiomm = results["cardiomm"]  # cardiomm's own protocol, as without --protocol
    assert set(cardiomm["tasks"]) == set(info.tasks)
    assert set(cardiomm["tasks"]["rhythm"]["linear_probe_pretrained"]["summary"]) == {"0.01", "0.1", "1.0"}

    merl = results["merl"]
    assert "maxima over epochs of the test macro AUROC" in merl["protocol"]
    assert str(tmp_path / "prompts.json") in merl["prompts_source"]
    model, processor = load_ecg_text_checkpoint(checkpoint)
    for task, names in info.tasks.items():
        entry = merl["tasks"][task]
        assert entry["zero_shot"]["prompts"] == {n: prompts[n] for n in names}
        # the command's zero-shot figures are those of the public API on the same checkpoint
        api = merl_zero_shot(model, processor, data["test"], info, task, prompts)
        assert entry["zero_shot"]["macro_auroc"] == pytest.approx(api.metrics.macro_auroc)
        assert entry["zero_shot"]["macro_f1"] == pytest.approx(api.metrics.macro_f1)
        assert set(entry["linear_probe"]) == {"10", "100"}  # 1% of 91 ECGs is no ECG: left out and listed
        assert any(s["protocol"] == "MERL linear probe 1%" for s in entry["skipped"])
        for ratio, probe in entry["linear_probe"].items():
            assert len(probe["history"]) == 2 and probe["epochs"] == 2
            assert probe["max_test_auroc"] == pytest.approx(max(h["test_auroc"] for h in probe["history"]))
            assert 0 <= probe["max_test_auroc"] <= 100
    markdown = (out / "results.md").read_text()
    for text in ("## cardiomm protocol", "## MERL protocol", "MERL zero-shot", "MERL linear probe",
                 "Differences from the cardiomm protocol", "zero-shot", "linear probe"):
        assert text in markdown and text in run.stdout, text
    assert (out / "roc_zero_shot_rhythm.png").exists()


def test_evaluate_merl_protocol_alone(checkpoint: Path, dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    run = run_cardiomm("evaluate", "--model", checkpoint, "--data", dataset_dir, "--out", out, "--protocol", "merl",
                       "--tasks", "rhythm", "--probe-ratios", "100", "--probe-epochs", "1", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    results = json.loads((out / "results.json").read_text())
    assert "cardiomm" not in results and list(results["tasks"]) == ["rhythm"]
    assert "knowledge-base prompts" in results["prompts_source"]  # no prompt file: the default prompts, said so
    assert results["differences_from_cardiomm_protocol"] and results["departures_from_merl_code"]
    assert set(results["tasks"]["rhythm"]["linear_probe"]) == {"100"}
    assert "MERL linear probe" in run.stdout and "## cardiomm protocol" not in run.stdout
    assert not list(out.glob("*.png"))


def test_evaluate_help_documents_the_protocols(tmp_path: Path) -> None:
    run = run_cardiomm("evaluate", "--help", cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    text = " ".join(run.stdout.split())
    for option in ("--protocol {cardiomm,merl,both}", "--prompts FILE", "--probe-ratios", "--probe-epochs",
                   "MAXIMUM TEST AUROC"):
        assert option in text, option
