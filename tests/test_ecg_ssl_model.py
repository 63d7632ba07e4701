"""The ECG-only self-supervised model: its loss (the multi-positive contrastive loss of its own embeddings, NT-Xent
for two views), the positives built from ids, attributes and explicit masks, two processes against one, the
projection head, input checks, and saving / loading (the whole model and the encoder alone, with and without
cardiomm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

import cardiomm  # noqa: F401  (registration)
from cardiomm import ECGFeatureExtractor, ECGSelfSupervisedConfig, ECGSelfSupervisedModel, ECGSelfSupervisedOutput
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.contrastive_losses import multi_positive_contrastive_loss
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.modeling.modeling_ecg_ssl import build_positive_mask
from gloo_processes import run_in_gloo_processes

LEADS, TIME = 12, 200


def resnet_config() -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[16, 16], stage_depths=[1, 1],
                            stage_kernel_sizes=[5, 3], stage_strides=[2, 2])


def vit_config() -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            patch_size=50, max_length=TIME)


def tiny_model(seed: int = 0, ecg_config: ECGEncoderConfig | None = None, **fields) -> ECGSelfSupervisedModel:
    torch.manual_seed(seed)
    config = ECGSelfSupervisedConfig(ecg_config=ecg_config or resnet_config(), projection_dim=8, **fields)
    return ECGSelfSupervisedModel(config)


def ecgs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, LEADS, TIME, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------ the loss

@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_loss_is_the_multi_positive_loss_of_the_models_own_embeddings(aggregation: str) -> None:
    model = tiny_model(positive_aggregation=aggregation, temperature=0.2).eval()
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])  # three, two, one (no positive) and two members
    with torch.no_grad():
        out = model(ecgs(8), positive_ids=ids)
    assert isinstance(out, ECGSelfSupervisedOutput)
    expected_mask = ids[:, None] == ids[None, :]
    expected = multi_positive_contrastive_loss(out.embeds, positive_mask=expected_mask, temperature=0.2,
                                               positive_aggregation=aggregation)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    # the other aggregation gives another value on this batch (anchors with two positives): the config is used
    other = multi_positive_contrastive_loss(out.embeds, positive_mask=expected_mask, temperature=0.2,
                                            positive_aggregation="mean" if aggregation == "sum" else "sum")
    assert abs(float(other) - float(out.loss)) > 1e-4
    # and another temperature another value
    colder = multi_positive_contrastive_loss(out.embeds, expected_mask, temperature=0.07,
                                             positive_aggregation=aggregation)
    assert abs(float(colder) - float(out.loss)) > 1e-4


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_two_views_give_nt_xent(aggregation: str) -> None:
    """With exactly one positive per anchor (two views of each ECG), the loss is NT-Xent: cross-entropy of the
    partner among the 2B - 1 other views, at similarity / tau."""
    tau = 0.07
    model = tiny_model(positive_aggregation=aggregation, temperature=tau).train()
    ids = torch.arange(4).repeat_interleave(2)  # [0, 0, 1, 1, 2, 2, 3, 3]
    out = model(ecgs(8, seed=1), positive_ids=ids)
    z = out.embeds.detach()
    torch.testing.assert_close(z.norm(dim=1), torch.ones(8))
    logits = z @ z.T / tau
    logits.fill_diagonal_(float("-inf"))  # an anchor is not its own candidate
    partner = torch.arange(8) ^ 1  # rows 2k and 2k + 1 are the two views of ECG k
    nt_xent = F.cross_entropy(logits, partner)
    torch.testing.assert_close(out.loss.detach(), nt_xent, rtol=1e-5, atol=1e-6)
    assert float(out.positive_pairs) == 1.0
    out.loss.backward()  # the gradient reaches the encoder and the head
    for part in (model.ecg_model, model.projection):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())


def test_no_anchor_with_a_positive_gives_zero_loss_and_no_pairs() -> None:
    model = tiny_model().eval()
    out = model(ecgs(4), positive_ids=torch.tensor([0, 1, 2, 3]))
    assert float(out.loss.detach()) == 0.0 and float(out.positive_pairs) == 0.0
    assert out.loss.requires_grad  # still part of the graph: backward() works


# ------------------------------------------------------------------------------------------------- the positives

def _pairs(model: ECGSelfSupervisedModel, **positives) -> float:
    with torch.no_grad():
        return float(model(ecgs(4), **positives).positive_pairs)


def test_ids_give_the_same_id_pairs() -> None:
    mask = build_positive_mask(4, positive_ids=torch.tensor([5, 5, 7, 5]))
    expected = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert _pairs(tiny_model().eval(), positive_ids=torch.tensor([5, 5, 7, 5])) == pytest.approx((2 + 2 + 0 + 2) / 4)


def test_attributes_within_the_threshold_are_positives_and_nan_rows_never() -> None:
    # distances: |a0 - a1| = 5 exactly, |a0 - a2| = sqrt(9 + 20.25) = 5.41, |a1 - a2| = 0.5; a3 has a NaN
    attributes = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.5], [float("nan"), 0.0]])
    mask = build_positive_mask(4, positive_attributes=attributes, attribute_threshold=5.0)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    below = build_positive_mask(4, positive_attributes=attributes, attribute_threshold=4.99)
    assert not below[0, 1] and below[1, 2]
    model = tiny_model(attribute_threshold=5.0).eval()
    assert _pairs(model, positive_attributes=attributes) == pytest.approx((1 + 2 + 1 + 0) / 4)
    model.config.attribute_threshold = 0.4  # nobody within 0.4
    assert _pairs(model, positive_attributes=attributes) == 0.0
    # an integer attribute tensor is read as numbers
    ints = torch.tensor([[0, 0], [3, 4], [30, 40], [3, 4]])
    assert torch.equal(build_positive_mask(4, positive_attributes=ints, attribute_threshold=5)[1],
                       torch.tensor([True, True, False, True]))


def test_explicit_mask_and_the_or_of_every_source() -> None:
    explicit = torch.zeros(4, 4, dtype=torch.bool)
    explicit[0, 3] = explicit[3, 0] = True
    assert torch.equal(build_positive_mask(4, positive_mask=explicit), explicit)
    assert torch.equal(build_positive_mask(4, positive_mask=explicit.long()), explicit)
    model = tiny_model(attribute_threshold=1.0).eval()
    assert _pairs(model, positive_mask=explicit) == pytest.approx(2 / 4)
    ids = torch.tensor([0, 0, 1, 2])  # 0-1
    attributes = torch.tensor([[0.0], [10.0], [20.0], [20.5]])  # 2-3
    union = build_positive_mask(4, ids, attributes, explicit, attribute_threshold=1.0)
    off_diagonal = union & ~torch.eye(4, dtype=torch.bool)
    assert {tuple(p) for p in off_diagonal.nonzero().tolist()} == {(0, 1), (1, 0), (2, 3), (3, 2), (0, 3), (3, 0)}
    assert _pairs(model, positive_ids=ids, positive_attributes=attributes, positive_mask=explicit) == pytest.approx(
        (2 + 1 + 1 + 2) / 4)
    # the loss takes that mask
    with torch.no_grad():
        out = model(ecgs(4), positive_ids=ids, positive_attributes=attributes, positive_mask=explicit)
    torch.testing.assert_close(out.loss, multi_positive_contrastive_loss(out.embeds, union, temperature=0.07))


# ------------------------------------------------------------------------------------------------- input checks

def test_invalid_inputs_raise_clear_errors() -> None:
    model = tiny_model().eval()
    x = ecgs(4)
    with pytest.raises(ValueError, match="return_loss=True needs positives"):
        model(x, return_loss=True)
    with pytest.raises(ValueError, match=r"positive_ids must be an integer tensor of shape \(4,\)"):
        model(x, positive_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="positive_ids must be an integer tensor"):
        model(x, positive_ids=torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"positive_attributes must have shape \(4, num_attributes\)"):
        model(x, positive_attributes=torch.zeros(4))
    with pytest.raises(ValueError, match=r"positive_mask must have shape \(4, 4\)"):
        model(x, positive_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive_mask must be boolean"):
        model(x, positive_mask=torch.ones(4, 4))
    # without positives and without return_loss: embeddings only
    out = model(x)
    assert out.loss is None and out.positive_pairs is None and out.embeds.shape == (4, 8)
    # positives with return_loss=False: the pair count but no loss
    out = model(x, positive_ids=torch.tensor([0, 0, 1, 1]), return_loss=False)
    assert out.loss is None and float(out.positive_pairs) == 1.0


@pytest.mark.parametrize("fields, message", [
    ({"positive_aggregation": "max"}, "positive_aggregation must be one of"),
    ({"temperature": 0.0}, "temperature must be positive"),
    ({"projection_dim": 0}, "projection_dim must be positive"),
    ({"projection_hidden_size": -1}, "projection_hidden_size must be None"),
    ({"projection_activation": "nope"}, "projection_activation 'nope'"),
    ({"attribute_threshold": -1.0}, "attribute_threshold must be >= 0"),
])
def test_invalid_configuration_raises(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ECGSelfSupervisedConfig(ecg_config=resnet_config(), **fields)


def test_projection_head_shapes() -> None:
    default = tiny_model()  # hidden = the encoder's pooled size (16)
    layers = list(default.projection)
    assert [type(layer) for layer in layers] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (16, 16, 8)
    wide = tiny_model(projection_hidden_size=24, projection_activation="gelu")
    assert wide.projection[0].out_features == 24 and not isinstance(wide.projection[1], nn.ReLU)
    linear = tiny_model(projection_hidden_size=0)
    assert len(linear.projection) == 1 and isinstance(linear.projection[0], nn.Linear)
    out = linear.eval()(ecgs(3))
    torch.testing.assert_close(out.embeds.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.embeds, F.normalize(linear.projection(out.pooler_output), dim=-1))
    torch.testing.assert_close(out.pooler_output, linear.ecg_model(ecgs(3)).pooler_output)
    # the lead and time masks reach the encoder
    lead_mask = torch.ones(3, LEADS, dtype=torch.bool)
    lead_mask[0, 6:] = False
    time_mask = torch.ones(3, TIME, dtype=torch.long)
    time_mask[1, 120:] = 0
    masked = linear(ecgs(3), lead_mask=lead_mask, time_mask=time_mask).pooler_output
    encoder_only = linear.ecg_model(ecgs(3), lead_mask=lead_mask, time_mask=time_mask).pooler_output
    torch.testing.assert_close(masked, encoder_only)
    assert not torch.allclose(masked[:2], out.pooler_output[:2])
    # hidden states of the encoder, on request
    states = linear(ecgs(3), output_hidden_states=True).ecg_model_output.hidden_states
    assert states is not None and len(states) == 2


def test_from_encoder_pretrained_keeps_the_encoder_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    encoder = ECGEncoderModel(resnet_config()).eval()
    encoder.save_pretrained(tmp_path)
    model = ECGSelfSupervisedModel.from_encoder_pretrained(tmp_path, projection_dim=4, temperature=0.1)
    assert model.config.projection_dim == 4 and model.config.temperature == 0.1
    for name, value in encoder.state_dict().items():
        assert torch.equal(model.ecg_model.state_dict()[name], value), name


# ----------------------------------------------------------------------- two processes against one (gloo, CPU)
WORLD_SIZE, LOCAL_BATCH = 2, 4
SOURCES = ("positive_ids", "positive_attributes", "positive_mask")


def _global_batch() -> dict[str, torch.Tensor]:
    return {
        "input_values": ecgs(WORLD_SIZE * LOCAL_BATCH, seed=5),
        # positives on the same process and across the two; id 9 alone
        "positive_ids": torch.tensor([0, 1, 0, 2, 1, 3, 2, 9]),
        # rows 0-5 and 2-6 are within 1.0 (across processes), 1-3 within 1.0 (same process), row 4 has a NaN
        "positive_attributes": torch.tensor([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0], [5.5, 5.0],
                                             [float("nan"), 1.0], [0.5, 0.5], [10.0, 0.9], [-20.0, 0.0]]),
        # explicit positives within each process's half: (B, B) local masks, the block diagonal of the whole batch
        "positive_mask": torch.block_diag(*[torch.tensor([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 1]])] * 2
                                          ).bool(),
    }


def _loss_and_gradients(batch: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    # the lead-aware ViT (layer norms, no dropout) in training mode: its outputs do not depend on the batch split
    model = tiny_model(seed=4, ecg_config=vit_config(), attribute_threshold=1.0, temperature=0.1).train()
    out = model(batch["input_values"], **{source: batch[source]})
    out.loss.backward()
    return {"loss": out.loss.detach(), "positive_pairs": out.positive_pairs,
            **{f"grad.{name}": p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}}


def _distributed_worker(rank: int) -> dict:
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    local = {k: v[rows] for k, v in _global_batch().items()}
    local["positive_mask"] = local["positive_mask"][:, rows]
    return {source: _loss_and_gradients(local, source) for source in SOURCES}


def test_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    """Ids and attributes are gathered, so two processes holding half the batch each find the positives of the
    whole batch, and a local (B, B) mask lands on the process's own block: the mean of their losses (and pair
    counts) is the single-process value, and the process average of their parameter gradients (what data-parallel
    training applies) is the single-process gradient."""
    ranks = run_in_gloo_processes(_distributed_worker, tmp_path, world_size=WORLD_SIZE, timeout=180)
    for source in SOURCES:
        single = _loss_and_gradients(_global_batch(), source)
        assert float(single["loss"]) > 0
        # the pairs across the two halves are found (ids, attributes), a local mask stays on its own block
        expected_pairs = {"positive_ids": (1 + 1 + 1 + 1 + 1 + 0 + 1 + 0) / 8,
                          "positive_attributes": (1 + 1 + 1 + 1 + 0 + 1 + 1 + 0) / 8,
                          "positive_mask": 2 * (1 + 2 + 0 + 1) / 8}[source]
        assert float(single["positive_pairs"]) == pytest.approx(expected_pairs)
        assert set(ranks[0][source]) == set(single), source
        for key, expected in single.items():
            mean = sum(r[source][key] for r in ranks) / WORLD_SIZE
            torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-6, msg=f"{source}: {key}")


# ------------------------------------------------------------------------------------------- saving and loading

def test_auto_model_round_trip_of_the_whole_model(tmp_path: Path) -> None:
    model = tiny_model(positive_aggregation="mean", attribute_threshold=0.5, projection_hidden_size=12).eval()
    model.save_pretrained(tmp_path)
    ECGFeatureExtractor(sampling_rate=500, crop_length=TIME).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ecg_ssl.ECGSelfSupervisedModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_ecg_ssl.ECGSelfSupervisedConfig"
    assert type(AutoConfig.from_pretrained(tmp_path)) is ECGSelfSupervisedConfig
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is ECGFeatureExtractor
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is ECGSelfSupervisedModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert (loaded.config.positive_aggregation, loaded.config.attribute_threshold) == ("mean", 0.5)
    ids = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        a, b = model(ecgs(4), positive_ids=ids), loaded(ecgs(4), positive_ids=ids)
    for key in ("loss", "embeds", "pooler_output", "positive_pairs"):
        assert torch.equal(a[key], b[key]), key


# Runs in a fresh interpreter: `import cardiomm` fails when blocked (argv[3] == "block"), so that only the
# checkpoint's own code is used; loads argv[1] with AutoModel (and AutoFeatureExtractor when saved) and writes the
# outputs on the stored probe to argv[2].
_LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, os, sys
    ckpt, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "block":
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "cardiomm" or name.startswith("cardiomm."):
                    raise ImportError("cardiomm is blocked in this process")
        sys.meta_path.insert(0, _Block())
        kwargs = {"trust_remote_code": True}
    else:
        import cardiomm  # noqa: F401
        kwargs = {}
    import numpy as np, torch
    from transformers import AutoFeatureExtractor, AutoModel
    model = AutoModel.from_pretrained(ckpt, **kwargs).eval()
    report = {"model": type(model).__module__ + "." + type(model).__name__}
    probe = torch.from_numpy(np.load(ckpt + "/probe.npy"))
    if os.path.exists(ckpt + "/preprocessor_config.json"):
        fe = AutoFeatureExtractor.from_pretrained(ckpt, **kwargs)
        report["feature_extractor"] = type(fe).__module__ + "." + type(fe).__name__
        probe = fe(probe.numpy(), sampling_rate=fe.sampling_rate, crop="center", return_tensors="pt")["input_values"]
    call = {}
    if os.path.exists(ckpt + "/ids.npy"):
        call["positive_ids"] = torch.from_numpy(np.load(ckpt + "/ids.npy"))
    with torch.no_grad():
        output = model(probe, **call)
    arrays = {k: v.numpy() for k, v in output.items() if isinstance(v, torch.Tensor)}
    np.savez(out, **arrays)
    print(report)
    """
)


def _load_in_fresh_process(tmp_path: Path, ckpt: Path, block_cardiomm: bool) -> tuple[str, dict[str, np.ndarray]]:
    out = tmp_path / "outputs.npz"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    if block_cardiomm:
        env.update({"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"})
    proc = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(ckpt), str(out),
                           "block" if block_cardiomm else "cardiomm"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1], dict(np.load(out))


def _saved_encoder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A model's encoder saved with `save_encoder` (with its feature extractor) and the pooled outputs the model
    gives on the stored raw probe."""
    model = tiny_model(seed=2).eval()
    with torch.no_grad():  # move the weights off their initial values
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    fe = ECGFeatureExtractor(sampling_rate=250, crop_length=TIME, min_length=TIME)
    ckpt = tmp_path / "encoder"
    model.save_encoder(ckpt, feature_extractor=fe)
    raw = np.random.default_rng(0).standard_normal((2, LEADS, 400)).astype(np.float32)
    np.save(ckpt / "probe.npy", raw)
    with torch.no_grad():
        expected = model(fe(raw, sampling_rate=250, crop="center", return_tensors="pt")["input_values"]).pooler_output
    return ckpt, expected.numpy()


def test_save_encoder_loads_as_an_ecg_encoder_with_cardiomm(tmp_path: Path) -> None:
    ckpt, expected = _saved_encoder(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "ecg_encoder" and config["architectures"] == ["ECGEncoderModel"]
    report, outputs = _load_in_fresh_process(tmp_path, ckpt, block_cardiomm=False)
    assert "cardiomm.modeling.modeling_ecg_encoder.ECGEncoderModel" in report
    assert "cardiomm.processing.feature_extraction_ecg.ECGFeatureExtractor" in report
    np.testing.assert_array_equal(outputs["pooler_output"], expected)


def test_save_encoder_loads_without_cardiomm(tmp_path: Path) -> None:
    ckpt, expected = _saved_encoder(tmp_path)
    report, outputs = _load_in_fresh_process(tmp_path, ckpt, block_cardiomm=True)
    assert ".ECGEncoderModel" in report and "ECGFeatureExtractor" in report and "cardiomm." not in report, report
    np.testing.assert_array_equal(outputs["pooler_output"], expected)


def test_whole_model_loads_without_cardiomm(tmp_path: Path) -> None:
    model = tiny_model(seed=6, positive_aggregation="mean", temperature=0.2).eval()
    ckpt = tmp_path / "ssl"
    model.save_pretrained(ckpt)
    probe, ids = ecgs(4, seed=8), torch.tensor([0, 0, 1, 1])
    np.save(ckpt / "probe.npy", probe.numpy())
    np.save(ckpt / "ids.npy", ids.numpy())
    with torch.no_grad():
        expected = model(probe, positive_ids=ids)
    report, outputs = _load_in_fresh_process(tmp_path, ckpt, block_cardiomm=True)
    assert ".ECGSelfSupervisedModel" in report and "cardiomm." not in report, report
    for key in ("loss", "embeds", "pooler_output", "positive_pairs"):
        np.testing.assert_array_equal(outputs[key], expected[key].numpy(), err_msg=key)
