"""``cardiomm finetune``: the EHR paper's fine-tuning recipe (MLP head, frozen-backbone head warm-up, LoRA) on a
tiny synthetic cohort, through the command: the warm-up leaves the backbone untouched, a killed run resumes to the
uninterrupted run's weights on either side of the warm-up boundary, the LoRA adapter reloads and merges with PEFT's
own API, seeds and fractions give one results table, and user mistakes are clear errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_process import KILLED_AFTER_STEP, describe, run_cardiomm
from safetensors.torch import load_file

TINY_ENCODER = dict(backbone="resnet1d_8", stage_channels=[8, 8, 16, 16], stage_depths=[1, 1, 1, 1],
                    stage_kernel_sizes=[5, 5, 3, 3], stage_strides=[2, 2, 2, 2])
STEPS = ("--max-steps", "8")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-patient synthetic dataset folder (tasks ``conditions``, multi-label, and ``rhythm``, one per ECG)."""
    from cardiomm.synthetic import synthesize

    out = tmp_path_factory.mktemp("finetune_data") / "cohort"
    synthesize(out_dir=out, n_patients=40, seed=0, write_wfdb_files=False)
    return out


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny ECG encoder (as a pretraining run exports it) with a 100-Hz, 2.5-s feature extractor."""
    from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
    from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
    from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor

    folder = tmp_path_factory.mktemp("finetune_encoder") / "encoder"
    torch.manual_seed(0)
    encoder = ECGEncoderModel(ECGEncoderConfig(**TINY_ENCODER))
    with torch.no_grad():  # non-trivial batch-norm statistics, to see whether the warm-up moves them
        for module in encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    encoder.save_pretrained(folder)
    ECGFeatureExtractor(sampling_rate=100, crop_length=250, window_stride=100, num_windows=6).save_pretrained(folder)
    return folder


def _finetune(*args: str | Path, out: Path, kill_after: int | None = None) -> Any:
    argv = ["finetune", "--config", "finetune_tiny", *map(str, args), "--out", str(out)]
    if kill_after is not None:
        return run_cardiomm(str(kill_after), *argv, command=(sys.executable, "-c", KILLED_AFTER_STEP))
    return run_cardiomm(*argv)


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory, cohort: Path, encoder_checkpoint: Path) -> dict:
    """Full fine-tuning and LoRA (8 steps, head warm-up of 4, a checkpoint every 2 steps), each run uninterrupted
    and killed then resumed: full fine-tuning killed after step 3 (resumes from step 2, inside the warm-up), LoRA
    killed after step 5 (resumes from step 4, the last warm-up step)."""
    root = tmp_path_factory.mktemp("finetune_resume")
    runs = {}
    for name, extra, kill_step in (("full", (), 3), ("lora", ("--lora",), 5)):
        args = ("--model", encoder_checkpoint, "--data", cohort, "--task", "conditions", *STEPS, *extra)
        whole = _finetune(*args, out=root / f"{name}_whole")
        assert whole.returncode == 0, describe(whole)
        killed = _finetune(*args, out=root / f"{name}_resumed", kill_after=kill_step)
        assert killed.returncode == 17, describe(killed)
        assert not (root / f"{name}_resumed" / "run_results.json").exists()
        resumed = _finetune(*args, out=root / f"{name}_resumed")
        assert resumed.returncode == 0, describe(resumed)
        runs[name] = {"whole": root / f"{name}_whole", "resumed": root / f"{name}_resumed", "stdout": whole.stdout,
                      "resumed_stdout": resumed.stdout}
    return runs


@pytest.mark.parametrize("name", ["full", "lora"])
def test_killed_run_resumes_to_the_uninterrupted_weights(resumed_runs: dict, name: str) -> None:
    whole, resumed = resumed_runs[name]["whole"], resumed_runs[name]["resumed"]
    info = json.loads((resumed / "run_info.json").read_text())
    assert info["resumed_from"] and info["resumed_from"].endswith("step_000002" if name == "full" else "step_000004")
    last = Path("checkpoints") / "step_000008" / "model.safetensors"  # the weights after the last step
    for relative in (last, Path("model.safetensors")):  # and the saved (best validation loss) model
        expected, got = load_file(whole / relative), load_file(resumed / relative)
        assert expected.keys() == got.keys()
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, (relative, different[:5])
    results = [json.loads((folder / "run_results.json").read_text()) for folder in (whole, resumed)]
    for key in ("steps", "validation_macro_auroc", "test_macro_auroc", "test_auroc"):
        assert results[0][key] == results[1][key], key


def test_head_warmup_keeps_the_backbone_then_trains_it(tmp_path: Path, cohort: Path, encoder_checkpoint: Path,
                                                       resumed_runs: dict) -> None:
    pretrained = load_file(encoder_checkpoint / "model.safetensors")
    warm = _finetune("--model", encoder_checkpoint, "--data", cohort, "--task", "conditions", "--max-steps", "4",
                     "--set", "training.load_best_model_at_end=false", out=tmp_path / "warmup_only")
    assert warm.returncode == 0, describe(warm)
    after_warmup = load_file(tmp_path / "warmup_only" / "model.safetensors")
    after_all = load_file(resumed_runs["full"]["whole"] / "checkpoints" / "step_000008" / "model.safetensors")
    # 4 steps = the whole warm-up: weights and batch-norm statistics of the encoder are exactly the pretrained ones
    for key, value in pretrained.items():
        assert torch.equal(after_warmup[f"ecg_encoder.{key}"], value), key
    initial_head = _initial_head(encoder_checkpoint, cohort)
    assert any(not torch.equal(after_warmup[k], v) for k, v in initial_head.items())  # the head trained
    # 4 more steps train the encoder too: convolutions and batch-norm statistics move
    moved = [k for k, v in pretrained.items() if not torch.equal(after_all[f"ecg_encoder.{k}"], v)]
    assert any(k.endswith("conv1.weight") for k in moved) and any(k.endswith("running_mean") for k in moved)


def _initial_head(encoder_checkpoint: Path, cohort: Path) -> dict[str, torch.Tensor]:
    """The head as seed 0 initialises it (what build_classifier gives before training)."""
    from cardiomm.data.ecg_dataset import read_dataset_info
    from cardiomm.evaluation.checkpoint import load_ecg_encoder
    from cardiomm.training.fine_tuning_model import build_classifier
    from cardiomm.training.sampling import seed_everything

    encoder, _ = load_ecg_encoder(encoder_checkpoint)
    labels = read_dataset_info(cohort).tasks["conditions"]
    seed_everything(0)
    model = build_classifier(encoder, dict(enumerate(labels)), "multi_label_classification",
                             head={"classifier_hidden_sizes": [16, 8]})
    return {f"classifier.{k}": v for k, v in model.classifier.state_dict().items()}


def test_head_warmup_freezes_gradients_and_batch_norms_by_global_step() -> None:
    from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
    from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
    from cardiomm.training.fine_tuning_model import HeadWarmup, build_classifier, wrap_with_lora

    torch.manual_seed(0)
    encoder = ECGEncoderModel(ECGEncoderConfig(**TINY_ENCODER))
    x = torch.randn(4, 12, 250)
    for lora in (False, True):
        model = build_classifier(encoder, {0: "a", 1: "b"}, "multi_label_classification")
        model = wrap_with_lora(model, {"r": 2}) if lora else model
        step = {"value": 0}
        warmup = HeadWarmup(model, 3, lambda: step["value"])
        backbone_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert backbone_norms and warmup.backbone_parameters and warmup.head_parameters
        for value, frozen in ((0, True), (2, True), (3, False), (7, False), (1, True)):
            step["value"] = value
            model.train()
            model(input_values=x).logits.sum().backward()
            assert all(p.requires_grad is not frozen for p in warmup.backbone_parameters), (lora, value)
            assert all((p.grad is None) is frozen for p in warmup.backbone_parameters), (lora, value)
            assert all(p.grad is not None for p in warmup.head_parameters)
            assert all(m.training is not frozen for m in backbone_norms), (lora, value)
            assert model.training  # the head keeps training (dropout)
            model.zero_grad(set_to_none=True)
        if lora:  # only the adapter, the batch-norm copies and the head are trained
            assert all("lora_" in n or "modules_to_save" in n for n, p in model.named_parameters()
                       if any(p is q for q in warmup.trainable_parameters))
        warmup.remove()
        assert all(p.requires_grad for p in warmup.backbone_parameters)


def test_lora_adapter_loads_onto_the_base_with_peft_and_merges(resumed_runs: dict) -> None:
    from peft import PeftModel
    from transformers import AutoFeatureExtractor, pipeline

    from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification

    folder = resumed_runs["lora"]["whole"]
    results = json.loads((folder / "run_results.json").read_text())
    assert 0 < results["trainable_parameters"] < results["total_parameters"]
    torch.manual_seed(1)
    x = torch.randn(3, 12, 250)
    base = ECGEncoderForSequenceClassification.from_pretrained(folder / "base_model")
    adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()
    with torch.no_grad():
        adapter_logits = adapted(input_values=x).logits
        merged = adapted.merge_and_unload().eval()
        merged_logits = merged(input_values=x).logits
        saved = ECGEncoderForSequenceClassification.from_pretrained(folder).eval()
        saved_logits = saved(input_values=x).logits
        plain_base = ECGEncoderForSequenceClassification.from_pretrained(folder / "base_model").eval()
        base_logits = plain_base(input_values=x).logits
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-5)
    assert torch.allclose(saved_logits, merged_logits, atol=1e-5)
    assert not torch.allclose(base_logits, saved_logits, atol=1e-4)  # the adapter and head changed the model
    # the folder is a Hub-ready checkpoint: labels, feature extractor, model card, the ecg-classification pipeline
    config = json.loads((folder / "config.json").read_text())
    assert "ecg-classification" in config["custom_pipelines"]
    assert AutoFeatureExtractor.from_pretrained(folder).sampling_rate == 100
    card = (folder / "README.md").read_text()
    assert "conditions" in card and f"{results['test_macro_auroc']:.4f}"[:4] in card
    classify = pipeline("ecg-classification", model=str(folder), trust_remote_code=True)
    predictions = classify(np.random.default_rng(0).normal(size=(12, 1000)).astype(np.float32), sampling_rate=100)
    assert {p["label"] for p in predictions} <= set(config["id2label"].values()) and predictions


def test_seeds_and_fractions_give_one_table(tmp_path: Path, cohort: Path) -> None:
    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.data.splits import stratified_fraction

    out = tmp_path / "scratch"
    args = ("--model", "random", "--data", cohort, "--task", "rhythm", "--fraction", "0.5", "1", "--seeds", "0", "1",
            "--max-steps", "2", "--set", "training.save_every_steps=null")
    first = _finetune(*args, out=out)
    assert first.returncode == 0, describe(first)
    results = json.loads((out / "results.json").read_text())
    assert results["problem_type"] == "single_label_classification"  # one rhythm per ECG: cross-entropy
    assert results["initialization"] == "random" and results["head_warmup_steps"] == 0
    dataset, info = load_ecg_dataset(cohort)
    train_labels = np.asarray(dataset["train"].with_format("numpy")["labels_rhythm"])
    assert [(r["fraction"], r["seed"]) for r in results["runs"]] == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    for run in results["runs"]:
        assert run["num_train"] == len(stratified_fraction(train_labels, run["fraction"], seed=run["seed"]))
        folder = Path(run["checkpoint"])
        assert folder == out / f"fraction_{run['fraction']:g}" / f"seed_{run['seed']}"
        config = json.loads((folder / "config.json").read_text())
        assert list(config["id2label"].values()) == info.tasks["rhythm"]
        assert config["classifier_head"] == "mlp" and config["problem_type"] == "single_label_classification"
    for row in results["summary"]:
        values = [r["test_macro_auroc"] for r in results["runs"] if r["fraction"] == row["fraction"]]
        assert row["test_macro_auroc_mean"] == pytest.approx(np.mean(values))
        assert row["test_macro_auroc_std"] == pytest.approx(np.std(values, ddof=1))
        assert row["trainable_parameters"] == row["total_parameters"]
        shown = f"{row['test_macro_auroc_mean']:.4f} ± {row['test_macro_auroc_std']:.4f}"
        assert shown in first.stdout and shown in (out / "results.md").read_text()
    seeds_differ = {r["test_macro_auroc"] for r in results["runs"] if r["fraction"] == 1.0}
    assert len(seeds_differ) == 2 or any(math.isnan(v) for v in seeds_differ)
    # the same command again reuses the finished runs; other settings in the same folder are refused
    again = _finetune(*args, out=out)
    assert again.returncode == 0, describe(again)
    assert again.stdout.count("finished already") == 4
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    other = _finetune(*args, "--set", "training.learning_rate=0.01", out=out)
    assert other.returncode == 2 and "other settings" in other.stderr and "choose another --out" in other.stderr


def test_user_mistakes_are_clear_errors(tmp_path: Path, cohort: Path, encoder_checkpoint: Path) -> None:
    base = ("--data", cohort, "--out", tmp_path / "out")
    task = run_cardiomm("finetune", "--model", encoder_checkpoint, *base, "--task", "diagnoses")
    assert task.returncode == 2 and "cardiomm: error:" in task.stderr
    assert str(cohort) in task.stderr and "no task 'diagnoses'" in task.stderr and "rhythm" in task.stderr
    key = run_cardiomm("finetune", "--model", encoder_checkpoint, *base, "--task", "rhythm",
                       "--set", "model.head_warmup_step=3")
    assert key.returncode == 2 and "model.head_warmup_step" in key.stderr and "head_warmup_steps" in key.stderr
    not_a_model = run_cardiomm("finetune", "--model", cohort, *base, "--task", "rhythm")
    assert not_a_model.returncode == 2 and str(cohort) in not_a_model.stderr
    fraction = run_cardiomm("finetune", "--model", "random", *base, "--task", "rhythm", "--fraction", "1.5")
    assert fraction.returncode == 2 and "fractions must lie in (0, 1]" in fraction.stderr
    assert not (tmp_path / "out").exists()


def test_plateau_metric_halves_the_rate_while_the_loss_drives_early_stopping(tmp_path: Path) -> None:
    """The loop's ``plateau_metric``: the rate halves after 2 evaluations without a better AUROC while the
    improving validation loss keeps training going (and vice versa the loss alone decides early stopping)."""
    from cardiomm.training import TrainingConfig, TrainingLoop

    class Regression(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}

    data = [(torch.randn(2), torch.randn(())) for _ in range(8)]
    evaluations = iter(range(100))

    def evaluate(model: torch.nn.Module, accelerator: object) -> dict[str, float]:
        i = next(evaluations)
        return {"loss": 1.0 / (i + 1), "macro_auroc": 0.7}  # the loss improves, the AUROC stalls

    config = TrainingConfig(output_dir=str(tmp_path), learning_rate=0.1, lr_schedule="plateau", plateau_patience=2,
                            early_stopping_patience=2, max_steps=6, per_device_batch_size=4, eval_every_steps=1,
                            save_every_steps=None, log_with=[], monitor_metric="eval_loss", monitor_mode="min")
    loop = TrainingLoop(Regression(), config, data, eval_fn=evaluate, plateau_metric="eval_macro_auroc",
                        plateau_mode="max")
    result = loop.train()
    assert result.global_step == 6 and not result.stopped_early
    rates = [float(row.split(",")[2]) for row in (tmp_path / "eval_metrics.csv").read_text().splitlines()[1:]]
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])  # halved after each 2 stalled AUROCs
