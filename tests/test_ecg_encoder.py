"""ECG encoders: presets, shapes, save/load, weight initialisation, lead masking, classification heads."""

from __future__ import annotations

import json
import math

import numpy as np
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from cardiomm.modeling.configuration_ecg_encoder import ECG_ENCODER_PRESETS, ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import (
    ECGEncoderForSequenceClassification,
    ECGEncoderModel,
    ECGEncoderOutput,
)

# Tiny configurations, one per network type.
TINY = {
    "resnet_basic": dict(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 16], stage_depths=[1, 1],
                         stage_kernel_sizes=[3, 3], stage_strides=[1, 2]),
    "resnet_bottleneck": dict(backbone="resnet1d_50", stem_channels=8, stage_channels=[4, 8], stage_depths=[2, 1],
                              stage_kernel_sizes=[3, 3], stage_strides=[1, 2]),
    "resnet1d_8": dict(backbone="resnet1d_8"),
    "vit": dict(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_length=1000),
}

# Exact parameter counts of the presets with 12 leads (the ResNets' BN buffers excluded).
PRESET_PARAMETERS = {
    "resnet1d_8": 1_068_928,
    "resnet1d_18": 3_848_832,
    "resnet1d_34": 7_223_168,
    "resnet1d_50": 15_959_168,
    "resnet1d_101": 28_266_624,
    "vit_tiny": 5_370_048,
    "vit_small": 21_356_928,
    "vit_base": 85_181_184,
    # MERL's ViT: patch conv 12*50*w + 100 positions*w + 12 pre-norm layers (MLP 4w) + final LayerNorm
    "merl_vit_tiny": 5_473_152,
    "merl_vit_small": 21_563_136,
    "merl_vit_middle": 38_188_032,
    "merl_vit_base": 85_593_600,
}


def _model(name: str, cls=ECGEncoderModel, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return cls(ECGEncoderConfig(**TINY[name], **overrides))


def _randomise_batch_norm(model: torch.nn.Module) -> None:
    """Give BN layers non-trivial statistics and affine parameters (as after training)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(3)


# ----------------------------------------------------------------------------------------------- configuration


def test_presets_fill_unset_fields_and_arguments_override() -> None:
    config = ECGEncoderConfig(backbone="vit_small", num_hidden_layers=4)
    assert config.hidden_size == 384 and config.num_attention_heads == 6 and config.patch_size == 100
    assert config.num_hidden_layers == 4
    assert config.num_layers == 4 and config.num_heads == 6  # aliases
    resnet = ECGEncoderConfig(backbone="resnet1d_50")
    assert resnet.backbone_family == "resnet1d" and resnet.block_type == "bottleneck"
    assert resnet.hidden_size == 2048  # 512 x expansion 4
    assert ECGEncoderConfig(backbone="resnet1d_8").hidden_size == 256
    assert ECGEncoderConfig().lead_names[:3] == ["I", "II", "III"]


def test_config_json_spells_out_every_resolved_field(tmp_path: Path) -> None:
    config = ECGEncoderConfig(backbone="resnet1d_34", num_labels=3)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in ECG_ENCODER_PRESETS["resnet1d_34"].items():
        assert saved[key] == value, key
    for key in ("num_leads", "lead_names", "hidden_size", "classifier_head", "classifier_hidden_sizes"):
        assert key in saved
    reloaded = ECGEncoderConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    remote = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "ECGEncoderConfig" and remote.stage_depths == [3, 4, 6, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(backbone="resnet1d_7"),
        dict(backbone="resnet1d_18", hidden_size=100),  # must equal the last stage's channels
        dict(backbone="resnet1d_18", stage_depths=[2, 2]),  # one entry per stage
        dict(backbone="vit_tiny", num_attention_heads=5),  # 192 % 5 != 0
        dict(backbone="vit_tiny", max_length=1050),
        dict(backbone="vit_tiny", lead_names=["I", "II"]),
        dict(backbone="vit_tiny", classifier_head="transformer"),
    ],
)
def test_invalid_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ECGEncoderConfig(**kwargs)


# ------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("backbone", list(ECG_ENCODER_PRESETS))
def test_preset_output_shapes_and_parameter_counts(backbone: str) -> None:
    model = ECGEncoderModel(ECGEncoderConfig(backbone=backbone)).eval()
    assert sum(p.numel() for p in model.parameters()) == PRESET_PARAMETERS[backbone]
    config = model.config
    with torch.inference_mode():
        out = model(torch.randn(2, 12, 1000), output_hidden_states=True)
    assert isinstance(out, ECGEncoderOutput)
    assert out.pooler_output.shape == (2, config.hidden_size)
    if config.backbone_family == "vit":
        assert out.last_hidden_state.shape == (2, 12 * 10, config.hidden_size)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert out.token_mask is None  # no lead_mask / time_mask: every token is attended
    elif config.backbone_family == "merl_vit":
        assert out.last_hidden_state.shape == (2, 1000 // 50, config.hidden_size)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert out.token_mask is None
        pooled = model.encoder.layernorm(out.last_hidden_state.mean(dim=1))  # mean first, then the norm
        assert torch.allclose(out.pooler_output, pooled, atol=1e-5)
        return
    else:
        total_stride = (config.stem_stride if config.stem_channels else 1) * math.prod(config.stage_strides)
        assert out.last_hidden_state.shape == (2, math.ceil(1000 / total_stride), config.hidden_size)
        assert len(out.hidden_states) == len(config.stage_channels) + (1 if config.stem_channels else 0)
        assert out.hidden_states[-1].shape == out.last_hidden_state.shape
        assert out.token_mask is None
    assert torch.isfinite(out.pooler_output).all()
    assert torch.allclose(out.pooler_output, out.last_hidden_state.mean(dim=1), atol=1e-5)


def test_resnet1d_8_matches_the_ehr_paper_layout() -> None:
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8"))
    convs = [m for n, m in model.named_modules() if n.endswith(("conv1", "conv2"))]
    assert [c.out_channels for c in convs[::2]] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert [c.kernel_size[0] for c in convs[::2]] == [5, 5, 5, 3, 3, 3, 3, 3]
    assert all(c.stride[0] == 2 for c in convs[::2])
    assert sum(p.numel() for p in model.parameters()) == 1_068_928  # "around 1M parameters"


@pytest.mark.parametrize("name", ["resnet_basic", "resnet1d_8", "vit"])
def test_variable_length_and_tuple_output(name: str) -> None:
    model = _model(name).eval()
    with torch.no_grad():
        for length in (500, 1000):
            out = model(torch.randn(3, 12, length))
            assert out.pooler_output.shape == (3, model.config.hidden_size)
        as_tuple = model(torch.randn(1, 12, 500), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[1].shape == (1, model.config.hidden_size)


def test_wrong_input_shapes_raise() -> None:
    vit = _model("vit").eval()
    for length in (950, 1100):  # not a multiple of patch_size / longer than max_length
        with pytest.raises(ValueError, match="patch_size"):
            vit(torch.randn(1, 12, length))
    with pytest.raises(ValueError, match="input_values"):
        vit(torch.randn(1, 8, 1000))
    with pytest.raises(ValueError, match="lead_mask"):
        vit(torch.randn(1, 12, 1000), lead_mask=torch.ones(1, 8, dtype=torch.bool))
    no_leads = torch.zeros(2, 12, dtype=torch.bool)
    no_leads[0, 0] = True
    with pytest.raises(ValueError, match="present lead"):
        vit(torch.randn(2, 12, 1000), lead_mask=no_leads)


# ----------------------------------------------------------------------------------------------- lead masks


@pytest.mark.parametrize("present", [[1], [0, 1, 7], list(range(12))])
def test_vit_outputs_ignore_absent_leads(present: list[int]) -> None:
    model = _model("vit").eval()
    lead_mask = torch.zeros(2, 12, dtype=torch.bool)
    lead_mask[:, present] = True
    x = torch.randn(2, 12, 1000)
    changed = x.clone()
    changed[~lead_mask] = torch.randn_like(changed[~lead_mask]) * 1e3
    if len(present) < 12:
        changed[0, [i for i in range(12) if i not in present][0]] = float("nan")
    with torch.no_grad():
        a = model(x, lead_mask=lead_mask)
        b = model(changed, lead_mask=lead_mask)
    assert torch.equal(a.pooler_output, b.pooler_output)
    assert torch.equal(a.last_hidden_state[a.token_mask], b.last_hidden_state[b.token_mask])
    assert int(a.token_mask.sum()) == 2 * len(present) * 10
    assert torch.isfinite(a.pooler_output).all()


def test_vit_per_sample_lead_masks_match_single_ecgs() -> None:
    model = _model("vit").eval()
    x = torch.randn(3, 12, 500)
    lead_mask = torch.zeros(3, 12, dtype=torch.bool)
    lead_mask[0, :] = True
    lead_mask[1, [1]] = True
    lead_mask[2, [0, 6, 11]] = True
    with torch.no_grad():
        batched = model(x, lead_mask=lead_mask).pooler_output
        single = torch.cat([model(x[i : i + 1], lead_mask=lead_mask[i : i + 1]).pooler_output for i in range(3)])
        all_leads = model(x[1:2]).pooler_output
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[1:2], all_leads, atol=1e-3)  # lead II alone is a different input


def test_vit_lead_embeddings_distinguish_leads() -> None:
    """The same signal on a different lead slot gives a different embedding (lead-specific embeddings)."""
    model = _model("vit").eval()
    signal = torch.randn(1, 1, 1000)
    on_lead_i = torch.zeros(1, 12, 1000)
    on_lead_i[:, 0:1] = signal
    on_v1 = torch.zeros(1, 12, 1000)
    on_v1[:, 6:7] = signal
    mask_i = torch.zeros(1, 12, dtype=torch.bool)
    mask_i[0, 0] = True
    mask_v1 = torch.zeros(1, 12, dtype=torch.bool)
    mask_v1[0, 6] = True
    with torch.no_grad():
        a = model(on_lead_i, lead_mask=mask_i).pooler_output
        b = model(on_v1, lead_mask=mask_v1).pooler_output
    assert not torch.allclose(a, b, atol=1e-4)


def test_resnet_zeroes_absent_leads() -> None:
    model = _model("resnet_basic").eval()
    lead_mask = torch.zeros(2, 12, dtype=torch.bool)
    lead_mask[:, :3] = True
    x = torch.randn(2, 12, 1000)
    zeroed = x.clone()
    zeroed[:, 3:] = 0.0
    changed = x.clone()
    changed[:, 3:] = float("nan")
    with torch.no_grad():
        a = model(x, lead_mask=lead_mask).pooler_output
        b = model(changed, lead_mask=lead_mask).pooler_output
        c = model(zeroed).pooler_output
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-6)


# ------------------------------------------------------------------------------------------ save / load / init


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "vit"])
def test_save_and_reload_gives_bit_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _model(name)
    _randomise_batch_norm(model)
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = ECGEncoderModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        expected = model(x, output_hidden_states=True)
        for other in (reloaded, auto):
            got = other(x, output_hidden_states=True)
            assert torch.equal(expected.pooler_output, got.pooler_output)
            assert torch.equal(expected.last_hidden_state, got.last_hidden_state)
    for (key, a), (key_b, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert key == key_b and torch.equal(a, b), key


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "vit"])
def test_init_weights_covers_every_parameter_and_buffer(name: str) -> None:
    model = _model(name, ECGEncoderForSequenceClassification, classifier_head="mlp", num_labels=3)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan") if tensor.is_floating_point() else -7)
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    model.initialize_weights()
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), key
            assert tensor.abs().max() < 10, key
        else:
            assert (tensor == 0).all(), key  # num_batches_tracked


@pytest.mark.parametrize("name", ["resnet_bottleneck", "vit"])
def test_missing_checkpoint_entries_are_initialised_on_load(tmp_path: Path, name: str) -> None:
    """v5 loads on the meta device: whatever the checkpoint lacks must come from _init_weights, not memory."""
    model = _model(name)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = [k for k in weights if k.endswith(("running_var", "running_mean", "num_batches_tracked",
                                                  "lead_embeddings", "temporal_embeddings", "layernorm.weight"))]
    dropped += [k for k in weights if k.endswith("weight")][:3]
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    reloaded = ECGEncoderModel.from_pretrained(tmp_path)
    state = reloaded.state_dict()
    for key in dropped:
        tensor = state[key]
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, key
        if key.endswith("running_var"):
            assert torch.equal(tensor, torch.ones_like(tensor)), key
        if key.endswith(("running_mean", "num_batches_tracked")):
            assert (tensor == 0).all(), key
    with torch.no_grad():
        assert torch.isfinite(reloaded.eval()(torch.randn(1, 12, 1000)).pooler_output).all()


def test_resnet_inference_layout_matches_autograd_layout() -> None:
    """Without autograd the ResNet runs channels-last with BN folded; results equal the autograd path."""
    for name in ("resnet1d_8", "resnet_bottleneck"):
        model = _model(name)
        _randomise_batch_norm(model)
        model.eval()
        x = torch.randn(3, 12, 1237)
        with torch.inference_mode():
            fast = model(x).last_hidden_state.clone()
        reference = model(x).last_hidden_state.detach()
        assert (fast - reference).abs().max() <= 1e-5 * reference.abs().max(), name


# ------------------------------------------------------------------------------------- gradient checkpointing


def test_vit_gradient_checkpointing_gives_same_gradients() -> None:
    model = _model("vit").train()
    x = torch.randn(2, 12, 500)
    lead_mask = torch.ones(2, 12, dtype=torch.bool)
    lead_mask[1, 4:] = False

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(x, lead_mask=lead_mask).pooler_output.pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
    checkpointed = gradients()
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], rtol=1e-4, atol=1e-6), name


def test_resnet_blocks_are_the_checkpointable_layers() -> None:
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = _model("resnet_basic")
    model.activation_checkpointing_enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing for m in layers)
    assert len(layers) == sum(len(stage) for stage in model.encoder.stages)


# ------------------------------------------------------------------------------------------ classification


@pytest.mark.parametrize(
    "problem_type, labels, reference",
    [
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
         lambda lg, y: F.binary_cross_entropy_with_logits(lg, y)),
        ("single_label_classification", torch.tensor([2, 0]), lambda lg, y: F.cross_entropy(lg, y)),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.3]]), lambda lg, y: F.mse_loss(lg, y)),
    ],
)
def test_classification_losses(problem_type: str, labels: torch.Tensor, reference) -> None:
    model = _model("resnet_basic", ECGEncoderForSequenceClassification, num_labels=3, problem_type=problem_type)
    out = model(torch.randn(2, 12, 500), labels=labels)
    assert out.logits.shape == (2, 3) and out.pooler_output.shape == (2, 16)
    assert torch.allclose(out.loss, reference(out.logits, labels))
    out.loss.backward()
    assert model.classifier.out_proj.weight.grad is not None


def test_problem_type_inferred_from_labels() -> None:
    model = _model("vit", ECGEncoderForSequenceClassification, num_labels=3)
    logits = torch.randn(4, 3)
    ints = torch.tensor([0, 2, 1, 1])
    multi_hot = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]])
    assert torch.allclose(model.compute_loss(logits, ints), F.cross_entropy(logits, ints))
    assert torch.allclose(model.compute_loss(logits, multi_hot), F.binary_cross_entropy_with_logits(logits, multi_hot))
    regression = _model("vit", ECGEncoderForSequenceClassification, num_labels=1)
    values = torch.randn(4)
    assert torch.allclose(regression.compute_loss(logits[:, :1], values), F.mse_loss(logits[:, 0], values))


def test_id2label_round_trip_and_mlp_head(tmp_path: Path) -> None:
    id2label = {0: "atrial fibrillation", 1: "left bundle branch block", 2: "low LVEF"}
    model = _model("resnet1d_8", ECGEncoderForSequenceClassification, id2label=id2label,
                   label2id={v: k for k, v in id2label.items()}, classifier_head="mlp",
                   problem_type="multi_label_classification")
    head = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in head] == [(256, 128), (128, 64), (64, 3)]
    assert [m.p for m in model.classifier.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    model.save_pretrained(tmp_path)
    reloaded = ECGEncoderForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.id2label == id2label
    assert reloaded.config.label2id == {v: k for k, v in id2label.items()}
    assert reloaded.config.num_labels == 3 and reloaded.config.problem_type == "multi_label_classification"
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, reloaded.eval()(x).logits)


@pytest.mark.parametrize("name", ["resnet_bottleneck", "vit"])
def test_encoder_checkpoint_loads_into_classifier_with_sane_head(tmp_path: Path, name: str) -> None:
    encoder = _model(name)
    _randomise_batch_norm(encoder)
    encoder.eval().save_pretrained(tmp_path)
    for head in ("linear", "mlp"):
        classifier = ECGEncoderForSequenceClassification.from_pretrained(
            tmp_path, num_labels=4, classifier_head=head
        ).eval()
        for key, value in encoder.state_dict().items():
            assert torch.equal(classifier.ecg_encoder.state_dict()[key], value), key
        for key, value in classifier.classifier.state_dict().items():
            assert torch.isfinite(value).all() and value.abs().max() < 1.0, key
        x = torch.randn(4, 12, 1000)
        with torch.no_grad():
            out = classifier(x)
            assert torch.equal(out.pooler_output, encoder(x).pooler_output)
        assert out.logits.abs().max() < 1.0
    # and back: a classifier checkpoint gives its encoder to ECGEncoderModel
    classifier.save_pretrained(tmp_path / "clf")
    back = ECGEncoderModel.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        assert torch.equal(back(x).pooler_output, encoder(x).pooler_output)


def _toy_task(n: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 1: lead II carries a 10-cycle sine; label 0: noise only."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, length, generator=generator) * 0.3
    y = (torch.rand(n, generator=generator) < 0.5).long()
    t = torch.linspace(0, 2 * math.pi * 10, length)
    x[y == 1, 1] += torch.sin(t)
    return x, y


@pytest.mark.parametrize("name, head, lr", [("resnet_basic", "linear", 3e-3), ("vit", "mlp", 1e-3)])
def test_loss_falls_on_a_toy_task(name: str, head: str, lr: float) -> None:
    model = _model(name, ECGEncoderForSequenceClassification, num_labels=2, classifier_head=head,
                   problem_type="single_label_classification").train()
    x, y = _toy_task(32, 500)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = model(x, labels=y).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        x_test, y_test = _toy_task(64, 500, seed=1)
        accuracy = (model(x_test).logits.argmax(-1) == y_test).float().mean().item()
    assert accuracy > 0.8


def test_feature_extractor_output_feeds_the_model_directly() -> None:
    """``model(**extractor(...))`` works: the extractor's ``time_mask`` is a model input."""
    from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor

    fe = ECGFeatureExtractor(sampling_rate=500, crop_length=1000)
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_8")).eval()
    inputs = fe(np.random.default_rng(0).standard_normal((2, 12, 1500)).astype(np.float32), sampling_rate=500)
    assert "time_mask" in inputs and "attention_mask" not in inputs
    with torch.no_grad():
        assert model(**inputs).pooler_output.shape == (2, 256)


def test_vit_ignores_padded_patches() -> None:
    """A record padded with extra patches (marked in time_mask) embeds like the unpadded record."""
    torch.manual_seed(0)
    model = ECGEncoderModel(ECGEncoderConfig(backbone="vit_tiny", num_hidden_layers=2, max_length=1000)).eval()
    x = torch.randn(1, 12, 600)
    padded = torch.cat([x, torch.full((1, 12, 400), 7.0)], dim=-1)
    mask = torch.cat([torch.ones(1, 600), torch.zeros(1, 400)], dim=-1).long()
    with torch.no_grad():
        ref = model(input_values=x).pooler_output
        out = model(input_values=padded, time_mask=mask).pooler_output
        unmasked = model(input_values=padded).pooler_output
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, ref, atol=1e-3)
    with pytest.raises(ValueError, match="time_mask"):
        model(input_values=x, time_mask=torch.ones(1, 10))


def test_resnet_embedding_does_not_depend_on_padding_values() -> None:
    """With ``time_mask``, the ResNet sees padding as zeros and pools over recorded positions only: whatever the
    padded samples hold, the embedding is the same, and it differs from pooling over the padding."""
    torch.manual_seed(0)
    model = ECGEncoderModel(ECGEncoderConfig(backbone="resnet1d_18")).eval()
    x = torch.randn(2, 12, 600)
    mask = torch.cat([torch.ones(2, 600), torch.zeros(2, 400)], dim=-1).long()
    mask[1] = 1  # the second record fills the window
    with torch.no_grad():
        outs = [model(torch.cat([x, torch.full((2, 12, 400), value)], dim=-1), time_mask=mask).pooler_output
                for value in (7.0, -3.0)]
        unmasked = model(torch.cat([x, torch.zeros(2, 12, 400)], dim=-1)).pooler_output
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    assert not torch.allclose(outs[0][0], unmasked[0], atol=1e-4)  # pooled over recorded positions only
    downsampled = model.encoder.downsample_time_mask(mask, 63)  # 1000 samples at a total stride of 16
    assert downsampled.shape == (2, 63) and downsampled[0].sum() == 38 and downsampled[1].all()


@pytest.mark.parametrize("backbone", ["resnet1d_18", "resnet1d_50"])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_resnet_gradient_checkpointing_keeps_gradients_and_batch_norm_statistics(
    backbone, use_reentrant, monkeypatch
) -> None:
    """Recomputing the blocks in the backward pass gives the gradients of a plain run and updates each batch norm's
    running statistics once, as the plain run does."""
    from cardiomm.modeling import modeling_ecg_encoder

    config = ECGEncoderConfig(backbone=backbone, num_labels=3, stage_depths=[1, 1, 1, 1])
    torch.manual_seed(0)
    plain = ECGEncoderForSequenceClassification(config).train()
    checkpointed = ECGEncoderForSequenceClassification(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    x, labels = torch.randn(4, 12, 500, requires_grad=use_reentrant), torch.tensor([0, 1, 2, 1])
    passes: list[bool] = []
    recomputing = modeling_ecg_encoder._recomputing
    monkeypatch.setattr(modeling_ecg_encoder, "_recomputing", lambda: passes.append(recomputing()) or passes[-1])
    plain(x, labels=labels).loss.backward()
    assert passes and not any(passes)  # a plain run computes each block once, outside the backward pass
    passes.clear()
    checkpointed(x, labels=labels).loss.backward()
    assert passes.count(True) == passes.count(False) == 4  # every block again in the backward pass
    plain_state, checkpointed_state = plain.state_dict(), checkpointed.state_dict()
    for name, value in plain_state.items():  # running statistics and num_batches_tracked: updated once
        torch.testing.assert_close(checkpointed_state[name], value, rtol=0, atol=0, msg=name)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
