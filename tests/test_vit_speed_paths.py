"""The ViT's fused query/key/value projection gives the numbers of the plain computation, runs the projections as
modules when they are hooked or LoRA-wrapped, and keeps the parameter names of saved checkpoints; ``cardiomm bench
vit`` prints its rates against both matrix-multiply baselines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli_process import describe, run_cardiomm

from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel, ECGViTLayer


def _tiny(backbone: str = "vit_tiny", **overrides) -> ECGEncoderModel:
    torch.manual_seed(0)
    options = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_length=400, patch_size=50)
    options.update(overrides)
    return ECGEncoderModel(ECGEncoderConfig(backbone=backbone, **options)).eval()


def _inputs(batch_size: int = 5, length: int = 400) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    lead_mask = torch.ones(batch_size, 12, dtype=torch.bool)
    lead_mask[1, 3:] = False
    lead_mask[3, :6] = False
    time_mask = torch.ones(batch_size, length, dtype=torch.long)
    time_mask[2, 250:] = 0
    return {"input_values": torch.randn(batch_size, 12, length), "lead_mask": lead_mask, "time_mask": time_mask}


def _reference_layer(layer: ECGViTLayer, hidden_states: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """The pre-norm layer written out from its weights: separate projections, softmax attention per head."""
    attention = layer.attention
    batch_size, num_tokens, hidden_size = hidden_states.shape
    normed = F.layer_norm(hidden_states, (hidden_size,), layer.layernorm_before.weight, layer.layernorm_before.bias,
                          layer.layernorm_before.eps)

    def heads(linear: torch.nn.Linear) -> torch.Tensor:
        projected = normed @ linear.weight.T + linear.bias
        return projected.reshape(batch_size, num_tokens, attention.num_heads, -1).permute(0, 2, 1, 3)

    query, key, value = heads(attention.q_proj), heads(attention.k_proj), heads(attention.v_proj)
    scores = query @ key.transpose(-1, -2) / math.sqrt(attention.head_dim)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    attended = (scores.softmax(-1) @ value).permute(0, 2, 1, 3).reshape(batch_size, num_tokens, hidden_size)
    hidden_states = hidden_states + attended @ attention.out_proj.weight.T + attention.out_proj.bias
    normed = F.layer_norm(hidden_states, (hidden_size,), layer.layernorm_after.weight, layer.layernorm_after.bias,
                          layer.layernorm_after.eps)
    hidden = F.gelu(normed @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias)
    return hidden_states + hidden @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias


@pytest.mark.parametrize("masked", [False, True])
def test_layer_matches_the_written_out_computation(masked: bool) -> None:
    layer = _tiny().encoder.layers[0]
    torch.manual_seed(2)
    hidden_states = torch.randn(3, 24, 32)
    key_mask = None
    if masked:
        key_mask = torch.ones(3, 24, dtype=torch.bool)
        key_mask[1, 10:] = False
    with torch.no_grad():
        output = layer(hidden_states, None if key_mask is None else key_mask[:, None, None, :])
        expected = _reference_layer(layer, hidden_states, key_mask)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def _outputs(model: ECGEncoderModel, **inputs) -> tuple[torch.Tensor, ...]:
    out = model(**inputs, output_hidden_states=True)
    return (out.last_hidden_state, out.pooler_output, *out.hidden_states)


def _with_separate_projections(model: ECGEncoderModel) -> list:
    """Register no-op hooks on every q_proj, so the projections run one by one as modules."""
    return [layer.attention.q_proj.register_forward_hook(lambda *args: None) for layer in model.encoder.layers]


@pytest.mark.parametrize("backbone", ["vit_tiny", "merl_vit_tiny"])
@pytest.mark.parametrize("train", [False, True])
def test_fused_projection_gives_the_separate_outputs_and_gradients(backbone: str, train: bool) -> None:
    inputs = _inputs()
    if backbone == "merl_vit_tiny":
        inputs["lead_mask"][3] = True
    results = []
    for separate in (False, True):
        model = _tiny(backbone).train(train)
        if train:
            model.activation_checkpointing_enable()
        if separate:
            _with_separate_projections(model)
        outputs = _outputs(model, **inputs)
        outputs[1].square().sum().backward()
        results.append((outputs, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (fused, fused_grads), (separate, separate_grads) = results
    assert len(fused_grads) == len(separate_grads) == len(list(model.parameters()))
    for a, b in zip(fused + tuple(fused_grads), separate + tuple(separate_grads)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_token_index_path_is_unchanged_by_fusion() -> None:
    inputs = _inputs()
    torch.manual_seed(3)
    token_index = torch.stack([torch.randperm(96)[:40] for _ in range(5)])
    token_index[0, -5:] = -1
    model = _tiny()
    fast = _outputs(model, **inputs, token_index=token_index)
    hooks = _with_separate_projections(model)
    slow = _outputs(model, **inputs, token_index=token_index)
    for hook in hooks:
        hook.remove()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_hooked_projections_run_as_modules() -> None:
    model = _tiny()
    inputs = _inputs()
    calls = []
    for layer in model.encoder.layers:
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(layer.attention, name).register_forward_hook(lambda module, args, out: calls.append(module))
    with torch.no_grad():
        model(**inputs)
    assert len(calls) == 3 * len(model.encoder.layers)


def test_lora_on_the_projections_changes_the_output() -> None:
    peft = pytest.importorskip("peft")
    model = _tiny()
    inputs = _inputs()
    with torch.no_grad():
        before = model(**inputs).pooler_output
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj"]))
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    with torch.no_grad():
        after = adapted(**inputs).pooler_output
    assert not torch.allclose(before, after, atol=1e-4)


def test_parameter_names_stay_those_of_saved_checkpoints() -> None:
    names = set(_tiny().state_dict())
    for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"encoder.layers.0.attention.{part}.weight" in names
    assert "encoder.layers.1.mlp.fc2.bias" in names
    assert not any("qkv" in name for name in names)


def test_bench_vit_prints_rates_against_both_matmul_baselines(tmp_path: Path) -> None:
    run = run_cardiomm("bench", "vit", "--backbones", "vit_tiny", "merl_vit_tiny", "--length", "500",
                       "--batch-size", "2", "--repeats", "1", "--warmup", "0", cwd=tmp_path, timeout=600)
    assert run.returncode == 0, describe(run)
    lines = [line for line in run.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    expected = [(backbone, precision, kind) for backbone in ("vit_tiny", "merl_vit_tiny")
                for precision, kinds in (("fp32", ("forward", "train")), ("bf16-autocast", ("forward", "train")),
                                         ("bf16-model", ("forward",)))
                for kind in kinds]
    assert [(row["backbone"], row["precision"], row["pass"]) for row in rows] == expected
    for row in rows:
        gflops, square, shaped = (float(row[key]) for key in ("gflops", "matmul_2048_gflops",
                                                              "matmul_model_shape_gflops"))
        assert gflops > 0 and square > 0 and shaped > 0
        assert math.isclose(float(row["fraction_2048"]), gflops / square, rel_tol=0.03)
        assert math.isclose(float(row["fraction_model_shape"]), gflops / shaped, rel_tol=0.03)
