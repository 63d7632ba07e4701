"""ECG-MTL (`ECGEncoderForMultiTask`): the masked multi-task loss against a hand computation, random and equal loss
weighting, the standardisation of regression targets, the AutoModel round trip, per-task metrics, and the
`ecg_multitask` objective through the `cardiomm pretrain` command (checkpoint, encoder, per-task evaluation, a clear
error for a bad task column)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel

from cardiomm import ECGEncoderConfig, ECGEncoderForMultiTask, ECGEncoderModel, ECGMultiTaskConfig
from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.evaluation.multitask_metrics import evaluate_multitask, multitask_metrics, predict_multitask
from cardiomm.training.config import load_config
from cardiomm.training.multitask import resolve_tasks, task_targets
from cardiomm.training.objectives import check_experiment
from cli_process import run_cardiomm

NAN = float("nan")


def tiny_config(**overrides) -> ECGMultiTaskConfig:
    fields = dict(
        ecg_config=ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 16], stage_depths=[1, 1],
                                    stage_kernel_sizes=[5, 3], stage_strides=[2, 2]),
        classification_tasks=["af", "lbbb"], regression_tasks=["lvef", "potassium"],
        regression_units={"lvef": "%", "potassium": "mmol/L"}, regression_mean=[55.0, 4.2],
        regression_std=[10.0, 0.5], head_hidden_sizes=[8], head_dropout=0.0,
    )
    return ECGMultiTaskConfig(**{**fields, **overrides})


def tiny_model(**overrides) -> ECGEncoderForMultiTask:
    torch.manual_seed(0)
    return ECGEncoderForMultiTask(tiny_config(**overrides))


ECGS = torch.randn(4, 12, 200, generator=torch.Generator().manual_seed(1))
CLS = torch.tensor([[1.0, NAN], [0.0, 1.0], [NAN, 0.0], [1.0, NAN]])
REG = torch.tensor([[40.0, NAN], [NAN, 4.0], [65.0, 5.0], [NAN, NAN]])


def hand_task_losses(model: ECGEncoderForMultiTask, logits: torch.Tensor, predictions: torch.Tensor
                     ) -> list[float]:
    """Per-task losses written out row by row: BCE / squared error of the standardised target, known rows only."""
    logits, predictions = logits.detach(), predictions.detach()
    losses = []
    for j in range(logits.shape[1]):
        terms = [F.binary_cross_entropy_with_logits(logits[i, j], CLS[i, j]) for i in range(4)
                 if not math.isnan(CLS[i, j])]
        losses.append(float(sum(terms) / len(terms)))
    for j in range(predictions.shape[1]):
        mean, std = model.config.regression_mean[j], model.config.regression_std[j]
        terms = [(predictions[i, j] - (REG[i, j] - mean) / std) ** 2 for i in range(4) if not math.isnan(REG[i, j])]
        losses.append(float(sum(terms) / len(terms)))
    return losses


# ------------------------------------------------------------------------------------------------ model math
def test_masked_loss_equals_the_hand_computation_with_equal_weights() -> None:
    model = tiny_model(loss_weighting="equal").eval()
    out = model(ECGS, classification_labels=CLS, regression_labels=REG)
    expected = hand_task_losses(model, out.classification_logits, out.regression_predictions)
    torch.testing.assert_close(out.task_losses, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, torch.tensor(expected).mean(), rtol=1e-5, atol=1e-6)  # equal = mean
    torch.testing.assert_close(out.loss_weights, torch.full((4,), 0.25))
    torch.testing.assert_close(out.classification_loss, torch.tensor(expected[:2]).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.regression_loss, torch.tensor(expected[2:]).mean(), rtol=1e-5, atol=1e-6)
    # a missing target does not count: the loss of the rows with a known target only is the same
    rows = [0, 1, 2]  # row 3 has only one known target (af); dropping it changes af's loss, so keep af's rows
    sub = model(ECGS[rows], classification_labels=CLS[rows], regression_labels=REG[rows])
    torch.testing.assert_close(sub.task_losses[1:], out.task_losses[1:], rtol=1e-5, atol=1e-6)


def test_missing_targets_give_finite_gradients_and_a_task_without_targets_gets_no_weight() -> None:
    model = tiny_model(loss_weighting="random").train()
    labels = CLS.clone()
    labels[:, 1] = NAN  # lbbb unknown in the whole batch
    out = model(ECGS, classification_labels=labels, regression_labels=REG)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert out.loss_weights[1] == 0 and out.task_losses[1] == 0
    assert float(out.loss_weights.sum()) == pytest.approx(1.0, abs=1e-6)
    # the head of the task without targets gets no gradient from the loss
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.classification_heads[1].parameters())


def test_random_weights_sum_to_one_change_every_step_and_come_from_torch_rng() -> None:
    model = tiny_model(loss_weighting="random").train()
    torch.manual_seed(123)
    first = model(ECGS, classification_labels=CLS, regression_labels=REG)
    second = model(ECGS, classification_labels=CLS, regression_labels=REG)
    for out in (first, second):
        assert float(out.loss_weights.sum()) == pytest.approx(1.0, abs=1e-6)
        assert (out.loss_weights > 0).all()
        torch.testing.assert_close(out.loss, (out.loss_weights * out.task_losses).sum(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first.loss_weights, second.loss_weights)
    torch.testing.assert_close(first.task_losses, second.task_losses)  # only the weights changed
    torch.manual_seed(123)
    again = model(ECGS, classification_labels=CLS, regression_labels=REG)
    torch.testing.assert_close(again.loss_weights, first.loss_weights)
    # the weights are softmax(z), z ~ N(0, 1): log-weight differences are the draws' differences
    torch.manual_seed(123)
    z = torch.randn(4)
    torch.testing.assert_close(first.loss_weights, torch.softmax(z, dim=0))


def test_random_weighting_is_equal_in_eval_mode_so_evaluation_is_deterministic() -> None:
    model = tiny_model(loss_weighting="random").eval()
    one = model(ECGS, classification_labels=CLS, regression_labels=REG)
    two = model(ECGS, classification_labels=CLS, regression_labels=REG)
    torch.testing.assert_close(one.loss_weights, torch.full((4,), 0.25))
    assert torch.equal(one.loss, two.loss)


def test_standardisation_round_trip_and_predictions_in_original_units() -> None:
    model = tiny_model().eval()
    values = torch.tensor([[40.0, 3.5], [72.5, 5.1]])
    standardised = model.standardize(values)
    torch.testing.assert_close(standardised, torch.tensor([[-1.5, -1.4], [1.75, 1.8]]))
    torch.testing.assert_close(model.to_original_units(standardised), values)
    out = model(ECGS)
    predicted = model.predict(ECGS)
    assert list(predicted) == ["af", "lbbb", "lvef", "potassium"]
    torch.testing.assert_close(predicted["lvef"], out.regression_predictions[:, 0] * 10.0 + 55.0)
    torch.testing.assert_close(predicted["af"], torch.sigmoid(out.classification_logits[:, 0]))
    assert out.loss is None and out.classification_logits.shape == (4, 2) and out.regression_predictions.shape == (4, 2)


def test_automodel_round_trip_keeps_the_tasks_and_the_outputs(tmp_path: Path) -> None:
    model = tiny_model(task_id2label={"af": {0: "no AF", 1: "AF"}}, task_columns={"af": "labels_conditions:af"},
                       regression_valid_ranges={"lvef": [5, 90]}).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is ECGEncoderForMultiTask
    for key in ("classification_tasks", "regression_tasks", "task_id2label", "regression_units", "regression_mean",
                "regression_std", "task_columns", "regression_valid_ranges", "loss_weighting"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    assert loaded.config.task_id2label["af"] == {0: "no AF", 1: "AF"}
    assert isinstance(loaded.ecg_encoder, ECGEncoderModel)
    one, two = model(ECGS), loaded(ECGS)
    torch.testing.assert_close(one.classification_logits, two.classification_logits)
    torch.testing.assert_close(one.regression_predictions, two.regression_predictions)


def test_a_model_needs_a_task_and_valid_scaling() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        ECGEncoderForMultiTask(ECGMultiTaskConfig(ecg_config=tiny_config().ecg_config))
    with pytest.raises(ValueError, match="regression_std"):
        tiny_config(regression_std=[1.0, 0.0])
    with pytest.raises(ValueError, match="loss_weighting"):
        tiny_config(loss_weighting="uncertainty")


# ------------------------------------------------------------------------------------------------ metrics
def test_per_task_metrics_ignore_missing_targets() -> None:
    config = tiny_config()
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.6]])
    cls_targets = np.array([[1, 0], [0, 1], [1, NAN], [0, NAN]])
    predictions = np.array([[50.0, 4.0], [60.0, 4.4], [70.0, 4.1], [80.0, 9.9]])
    reg_targets = np.array([[50.0, 4.0], [60.0, 4.4], [70.0, NAN], [80.0, NAN]])
    result = multitask_metrics(config, scores, cls_targets, predictions, reg_targets)
    assert result["af"].auroc == 1.0 and result["af"].num_samples == 4 and result["af"].num_positives == 2
    assert result["lbbb"].auroc == 1.0 and result["lbbb"].num_samples == 2
    assert result["lvef"].r2 == pytest.approx(1.0) and result["lvef"].pearson == pytest.approx(1.0)
    assert result["potassium"].num_samples == 2 and result["potassium"].r2 == pytest.approx(1.0)
    assert result.summary()["mean_auroc"] == 1.0
    worse = multitask_metrics(config, scores[:, ::-1], cls_targets, predictions[::-1], reg_targets)
    assert worse["af"].auroc == 0.0 and worse["lvef"].r2 < 0 and worse["lvef"].spearman == pytest.approx(-1.0)


def test_window_predictions_are_the_median_over_windows_also_with_one_task_kind() -> None:
    from datasets import Dataset

    from cardiomm import ECGFeatureExtractor

    model = tiny_model(regression_tasks=[], regression_units={}, regression_mean=[], regression_std=[]).eval()
    ecgs = np.random.default_rng(0).normal(size=(3, 12, 1000)).astype(np.float32)
    rows = Dataset.from_dict({"ecg": ecgs, "lead_mask": np.ones((3, 12), bool)}).with_format("numpy")
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=500, window_stride=100, num_windows=6)
    logits, predictions = predict_multitask(model, extractor, rows, 100, crop="windows")
    assert logits.shape == (3, 2) and predictions.shape == (3, 0)
    windows = extractor(ecg=ecgs, sampling_rate=100, crop="windows", return_tensors="pt")
    with torch.no_grad():
        per_window = model(windows["input_values"].flatten(0, 1)).classification_logits.reshape(3, 6, 2)
    np.testing.assert_allclose(logits, per_window.median(dim=1).values.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ the objective
def tiny_settings(out: Path, data: Path, steps: int = 4) -> list[str]:
    values = {
        "data.path": str(data), "data.synthetic.n_patients": 40, "training.output_dir": str(out),
        "training.max_steps": steps, "training.per_device_batch_size": 8, "training.save_every_steps": 2,
        "training.eval_every_steps": 2, "training.log_every_steps": 1, "training.warmup_steps": 1,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny `cardiomm pretrain ecg_mtl_tiny` run: (its output folder, its synthetic dataset folder)."""
    root = tmp_path_factory.mktemp("mtl")
    result = run_cardiomm("pretrain", "--config", "ecg_mtl_tiny", *tiny_settings(root / "run", root / "data"),
                          timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 4 steps" in result.stdout
    return root / "run", root / "data"


def test_pretrain_writes_a_checkpoint_whose_encoder_and_per_task_evaluation_load(trained: tuple[Path, Path]) -> None:
    from cardiomm.evaluation.checkpoint import load_ecg_encoder

    run, data = trained
    encoder, feature_extractor = load_ecg_encoder(run)
    assert isinstance(encoder, ECGEncoderModel) and not encoder.training
    assert feature_extractor.sampling_rate == 100 and feature_extractor.crop_length == 500
    assert feature_extractor.window_stride == 100 and feature_extractor.num_windows == 6  # 5-s windows, 1 s apart
    weights = load_file(str(run / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        assert torch.equal(weights[f"ecg_encoder.{name}"], value), name

    dataset, info = load_ecg_dataset(data)
    model = AutoModel.from_pretrained(run)
    config = model.config
    assert config.classification_tasks == [*info.tasks["conditions"], "sex"]
    assert config.regression_tasks[:2] == ["age", "lvef"] and config.regression_units["lvef"] == "%"
    assert config.task_columns["sex"] == "sex" and config.task_columns["lvef"] == "lvef"
    # the standardisation is the training split's, not the whole cohort's
    _, train_regression = task_targets(dataset["train"], config, info)
    np.testing.assert_allclose(config.regression_mean, np.nanmean(train_regression, axis=0), rtol=1e-5)
    np.testing.assert_allclose(config.regression_std, np.nanstd(train_regression, axis=0), rtol=1e-4)
    everything = np.concatenate([task_targets(dataset[s], config, info)[1] for s in dataset])
    assert not np.allclose(config.regression_mean, np.nanmean(everything, axis=0), rtol=1e-5)

    metrics = evaluate_multitask(model, feature_extractor, dataset["test"], info)
    assert [t.task for t in metrics.tasks] == config.task_names
    assert metrics["lvef"].num_samples == int(np.isfinite(np.asarray(dataset["test"]["lvef"], float)).sum())
    assert np.isfinite(metrics.mean_auroc) and np.isfinite(metrics["age"].r2)
    windows = evaluate_multitask(model, feature_extractor, dataset["test"], info, crop="windows")
    assert windows["age"].num_samples == metrics["age"].num_samples
    # every window holds signal: the predictions differ between records (a window past the end would be padding)
    records = dataset["test"].select_columns(["ecg", "lead_mask"]).with_format("numpy")
    for crop in ("center", "windows"):
        logits, predictions = predict_multitask(model, feature_extractor, records, info.sampling_rate,
                                                info.lead_names, crop=crop)
        assert logits.shape == (len(records), len(config.classification_tasks))
        assert (logits.std(axis=0) > 1e-4).all() and (predictions.std(axis=0) > 1e-5).all(), crop

    header = (run / "eval_metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval_loss", "eval_mean_auroc", "eval_mean_r2", "eval_auroc/sex", "eval_r2/lvef"} <= set(header)


def test_a_bad_task_column_is_an_error_naming_it(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, data = trained
    result = run_cardiomm("pretrain", "--config", "ecg_mtl_tiny", *tiny_settings(tmp_path / "bad", data),
                          "--set", "data.regression_columns=[lvef, lv_ejection]", timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cardiomm: error:" in result.stderr and "'lv_ejection'" in result.stderr
    assert "ecg_mtl_tiny.yaml" in result.stderr
    dataset, info = load_ecg_dataset(data)
    with pytest.raises(ValueError, match="'labels_conditions:atrial fibrilation'"):
        resolve_tasks(dataset["train"].features, info, ["labels_conditions:atrial fibrilation"], [])
    with pytest.raises(ValueError, match="'report' is not numeric"):
        resolve_tasks(dataset["train"].features, info, [], ["report"])


def test_misspelt_keys_are_errors_naming_them_before_anything_is_built(tmp_path: Path) -> None:
    result = run_cardiomm("pretrain", "--config", "ecg_mtl_tiny", "--set", f"data.path={tmp_path / 'd'}",
                          "--set", "model.head_hiden_sizes=[8]", "--set", "data.regresion_columns=[lvef]",
                          "--set", f"training.output_dir={tmp_path / 'out'}", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'model.head_hiden_sizes'" in result.stderr and "'model.head_hidden_sizes'" in result.stderr
    assert "'data.regresion_columns'" in result.stderr and "'data.regression_columns'" in result.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["ecg_mtl_tiny", "ecg_mtl"])
def test_the_shipped_experiment_files_pass_their_checks(name: str) -> None:
    import cardiomm

    experiment = load_config(Path(cardiomm.__file__).parent / "configs" / f"{name}.yaml")
    check_experiment(experiment)
    saved = json.dumps(experiment.data)
    assert "classification_columns" in saved and "regression_columns" in saved
