"""K-MERL (`KMERLQueryModel`): the cardiac query network, lead and segment masking, any lead subset, the entity
vocabulary in the checkpoint, and loading without cardiomm."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertConfig

import cardiomm  # noqa: F401  (registration)
from cardiomm import ECGEncoderConfig, KMERLQueryModel, KMERLQueryModelConfig
from cardiomm.modeling.modeling_kmerl import masked_token_index
from cardiomm.training.objectives import resolve_text_model_path

LEADS, TIME, PATCH = 12, 400, 50
ENTITIES = ["atrial fibrillation", "sinus rhythm", "left bundle branch block"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_text_model_path("offline-minilm"))


def tiny_model(tokenizer, entities=ENTITIES, **overrides) -> KMERLQueryModel:
    torch.manual_seed(0)
    ecg = ECGEncoderConfig(backbone="vit_tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=PATCH, max_length=TIME)
    text = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    fields = dict(projection_dim=16, projection_hidden_size=24, query_hidden_size=16, query_num_layers=2,
                  query_num_heads=2, entity_max_length=8, text_pooling="mean")
    config = KMERLQueryModelConfig(ecg_config=ecg, text_config=text, **{**fields, **overrides})
    model = KMERLQueryModel(config)
    if entities:
        model.set_entity_vocabulary(entities, tokenizer, {"conduction disturbance": ["left bundle branch block"]})
    return model


def reports(tokenizer, n: int = 4) -> dict[str, torch.Tensor]:
    texts = ["atrial fibrillation", "sinus rhythm, normal ECG", "LBBB", "sinus rhythm with LBBB"][:n]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def ecgs(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, LEADS, TIME, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------ masking

def test_lead_and_segment_masking_keep_what_the_paper_says() -> None:
    generator = torch.Generator().manual_seed(0)
    lead_mask = torch.ones(2000, LEADS, dtype=torch.bool)
    lead_mask[:500, 2:] = False  # 500 ECGs recorded with two leads only
    num_patches = 20
    index = masked_token_index(lead_mask, num_patches, 9, 11, 0.25, generator=generator)
    kept_patches = num_patches - 5
    assert index.shape[1] % kept_patches == 0
    grid = index.reshape(2000, -1, kept_patches)
    real = grid[:, :, 0] >= 0
    assert ((grid >= 0) == real[:, :, None]).all()  # a lead is kept with all of its kept patches or not at all
    leads = torch.where(real, grid[:, :, 0] // num_patches, -1)
    num_kept = real.sum(dim=1)
    # 12 leads recorded: 12 - k kept, k uniform in 9..11, every count drawn
    full = num_kept[500:]
    assert set(full.tolist()) == {1, 2, 3}
    assert all(abs((full == c).float().mean().item() - 1 / 3) < 0.05 for c in (1, 2, 3))
    # two leads recorded: never a lead that is not there
    assert (leads[:500][real[:500]] < 2).all() and (num_kept[:500] <= 2).all() and (num_kept >= 1).all()
    # every kept lead keeps the same number of patches, distinct, in time order, all from that lead
    patches = grid % num_patches
    assert (grid[real] // num_patches == leads[real][:, None]).all()
    assert (patches[real].diff(dim=1) > 0).all()
    # leads are chosen at random: every lead is kept sometimes
    assert set(leads[500:][real[500:]].tolist()) == set(range(LEADS))


def test_segment_masking_prefers_recorded_patches() -> None:
    lead_mask = torch.ones(3, LEADS, dtype=torch.bool)
    patch_mask = torch.zeros(3, 8, dtype=torch.bool)
    patch_mask[:, :6] = True  # the last two patches are padding
    index = masked_token_index(lead_mask, 8, 9, 9, 0.25, patch_mask=patch_mask,
                               generator=torch.Generator().manual_seed(1))
    assert ((index % 8) < 6).all()


def test_training_drops_masked_tokens_before_the_encoder(tokenizer) -> None:
    model = tiny_model(tokenizer).train()
    x, text = ecgs(), reports(tokenizer)
    torch.manual_seed(3)
    out = model(x, **text)
    tokens = out.ecg_model_output.last_hidden_state.shape[1]
    num_patches = TIME // PATCH
    assert tokens <= 3 * (num_patches - round(0.25 * num_patches)) < LEADS * num_patches
    # the values of a masked token never reach the outputs: replay the same draw with the other tokens changed
    torch.manual_seed(3)
    index = model.masked_token_index(x, None, None)
    kept = torch.zeros(4, LEADS * num_patches, dtype=torch.bool)
    for row, idx in enumerate(index):
        kept[row, idx[idx >= 0]] = True
    changed = x.reshape(4, LEADS, num_patches, PATCH).clone()
    changed[~kept.reshape(4, LEADS, num_patches)] = 1e3
    model.eval()  # no dropout, so the two passes are comparable; masking is applied by hand below
    with torch.no_grad():
        a = model.ecg_model(x, token_index=index).pooler_output
        b = model.ecg_model(changed.reshape(4, LEADS, TIME), token_index=index).pooler_output
    torch.testing.assert_close(a, b)


def test_masking_is_off_at_inference_and_can_be_turned_off(tokenizer) -> None:
    model = tiny_model(tokenizer).eval()
    with torch.no_grad():
        out = model(ecgs(), **reports(tokenizer))
    assert out.ecg_model_output.last_hidden_state.shape[1] == LEADS * TIME // PATCH
    unmasked = tiny_model(tokenizer, lead_masking=False).train()
    out = unmasked(ecgs(), **reports(tokenizer))
    assert out.ecg_model_output.last_hidden_state.shape[1] == LEADS * TIME // PATCH


# ------------------------------------------------------------------------------------------- query network, loss

def test_loss_is_contrastive_plus_query_bce(tokenizer) -> None:
    model = tiny_model(tokenizer, query_loss_weight=0.5).eval()
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]])
    with torch.no_grad():
        out = model(ecgs(), **reports(tokenizer), entity_labels=labels)
    assert out.entity_logits.shape == (4, 3)
    bce = F.binary_cross_entropy_with_logits(out.entity_logits, labels)
    torch.testing.assert_close(out.query_loss, bce)
    torch.testing.assert_close(out.loss, out.contrastive_loss + 0.5 * bce)
    with pytest.raises(ValueError, match="entity_labels must have shape"):
        model(ecgs(), **reports(tokenizer), entity_labels=labels[:, :2])


def test_query_loss_trains_every_part(tokenizer) -> None:
    model = tiny_model(tokenizer).train()
    out = model(ecgs(), **reports(tokenizer), entity_labels=torch.ones(4, 3), return_loss=True)
    out.query_loss.backward()
    for name in ("query_network.classifier.weight", "query_network.layers.0.cross_attention.k_proj.weight",
                 "ecg_model.encoder.embeddings.patch_projection.weight",
                 "text_model.embeddings.word_embeddings.weight"):  # entity queries come from the text tower
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_zero_shot_queries_are_any_text_and_the_vocabulary_is_the_default(tokenizer) -> None:
    model = tiny_model(tokenizer).eval()
    x = ecgs()
    with torch.no_grad():
        default = model.get_query_logits(x)
        names = tokenizer(ENTITIES, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
        explicit = model.get_query_logits(x, query_embeds=model.encode_queries(names["input_ids"],
                                                                               names["attention_mask"]))
        unseen = tokenizer(["right axis deviation", "prolonged QT"], padding=True, return_tensors="pt")
        other = model.get_query_logits(x, query_embeds=model.encode_queries(unseen["input_ids"],
                                                                            unseen["attention_mask"]))
    torch.testing.assert_close(default, explicit)
    assert other.shape == (4, 2) and torch.isfinite(other).all()


def test_frozen_text_tower_computes_entity_queries_once(tokenizer) -> None:
    model = tiny_model(tokenizer, freeze_text_layers=-1).train()
    calls = []
    hook = model.text_model.register_forward_hook(lambda *args: calls.append(1))
    features = torch.randn(4, 32)
    for _ in range(3):
        model(ecgs(), text_pooler_output=features, entity_labels=torch.zeros(4, 3))
    hook.remove()
    assert len(calls) == 1  # the entity names once; reports came as features
    trained = tiny_model(tokenizer).train()
    calls.clear()
    hook = trained.text_model.register_forward_hook(lambda *args: calls.append(1))
    for _ in range(2):
        trained(ecgs(), text_pooler_output=features, entity_labels=torch.zeros(4, 3))
    hook.remove()
    assert len(calls) == 2  # refreshed at every step while the tower trains


# ------------------------------------------------------------------------------------------------- partial leads

@pytest.mark.parametrize("leads", [[0], [1], [0, 1, 2], list(range(6)), list(range(12))])
def test_any_lead_subset_ignores_the_absent_leads(tokenizer, leads) -> None:
    model = tiny_model(tokenizer).eval()
    lead_mask = torch.zeros(4, LEADS, dtype=torch.bool)
    lead_mask[:, leads] = True
    x = ecgs()
    garbage = x.clone()
    garbage[:, [i for i in range(LEADS) if i not in leads]] = float("nan")
    with torch.no_grad():
        a = model.get_query_logits(x, lead_mask=lead_mask)
        b = model.get_query_logits(garbage, lead_mask=lead_mask)
        ea = model.get_ecg_features(x, lead_mask=lead_mask).pooler_output
        eb = model.get_ecg_features(garbage, lead_mask=lead_mask).pooler_output
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ea, eb)


def test_training_with_partially_recorded_ecgs(tokenizer) -> None:
    model = tiny_model(tokenizer).train()
    lead_mask = torch.zeros(4, LEADS, dtype=torch.bool)
    lead_mask[0, 0] = lead_mask[1, :3] = lead_mask[2:, :] = True
    out = model(ecgs(), **reports(tokenizer), lead_mask=lead_mask, entity_labels=torch.zeros(4, 3))
    assert torch.isfinite(out.loss)
    assert bool(out.ecg_model_output.token_mask[0].any())


# ------------------------------------------------------------------------------------------------ configuration

def test_configuration_checks() -> None:
    with pytest.raises(ValueError, match="lead-aware ViT"):
        KMERLQueryModelConfig(ecg_config=ECGEncoderConfig(backbone="resnet1d_8"))
    with pytest.raises(ValueError, match="min_masked_leads"):
        KMERLQueryModelConfig(min_masked_leads=11, max_masked_leads=9)
    with pytest.raises(ValueError, match="segment_masking_ratio"):
        KMERLQueryModelConfig(segment_masking_ratio=1.0)
    config = KMERLQueryModelConfig()
    assert config.ecg_config.backbone == "vit_tiny" and config.query_num_layers == 4 and config.query_num_heads == 4
    assert (config.min_masked_leads, config.max_masked_leads, config.segment_masking_ratio) == (9, 11, 0.25)
    assert not config.unimodal_alignment and config.learnable_temperature is False


# --------------------------------------------------------------------------------------------------- checkpoints

_LOAD_WITHOUT_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm."):
                raise ImportError("cardiomm is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import json, numpy as np, torch
    from transformers import AutoModel
    ckpt = sys.argv[1]
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    assert "cardiomm" not in type(model).__module__, type(model).__module__
    with torch.no_grad():
        logits = model.get_query_logits(torch.from_numpy(np.load(ckpt + "/probe.npy")))
    np.save(ckpt + "/logits.npy", logits.numpy())
    print(json.dumps({"entities": model.config.entity_names, "hierarchy": model.config.entity_hierarchy}))
    """
)


def test_checkpoint_restores_the_vocabulary_with_and_without_cardiomm(tokenizer, tmp_path: Path) -> None:
    model = tiny_model(tokenizer).eval()
    model.save_pretrained(tmp_path)
    x = ecgs()
    np.save(tmp_path / "probe.npy", x.numpy())
    with torch.no_grad():
        expected = model.get_query_logits(x)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is KMERLQueryModel and loaded.config.entity_names == ENTITIES
    assert loaded.config.entity_hierarchy == {"conduction disturbance": ["left bundle branch block"]}
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_query_logits(x), expected)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_CARDIOMM, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"entities": ["atrial fibrillation", "sinus rhythm", "left bundle branch block"]' in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_full_lead_evaluation_scores_kmerl_with_its_query_network(tokenizer, tmp_path: Path) -> None:
    """`evaluate_ecg_text_model` reports the query network's zero-shot next to the cosine one, and its figures are
    the AUROCs of the sigmoid of `get_query_logits` on the class names."""
    from datasets import DatasetDict

    from cardiomm import ECGFeatureExtractor, ECGTextProcessor
    from cardiomm.data.ecg_dataset import label_column, load_ecg_dataset
    from cardiomm.evaluation.metrics import as_multi_hot, auroc_columns
    from cardiomm.evaluation.runner import dataset_class_names, evaluate_ecg_text_model
    from cardiomm.synthetic import synthesize

    synthesize(24, tmp_path / "data", seed=0, write_wfdb_files=False, include_ehr=False, progress=False)
    data, info = load_ecg_dataset(tmp_path / "data")
    data = DatasetDict({k: v.with_format("numpy") for k, v in data.items()})
    model = tiny_model(tokenizer).eval()
    processor = ECGTextProcessor(ECGFeatureExtractor(sampling_rate=500, crop_length=TIME), tokenizer)
    with pytest.warns(UserWarning):  # classes without positive test ECGs are left out and named
        report = evaluate_ecg_text_model(model, processor, data, info, tasks=["rhythm"], fractions=(1.0,), seeds=(0,),
                                         progress=False)
    entry = report.results["tasks"]["rhythm"]
    assert "zero_shot" in entry and "zero_shot_query_network" in entry
    names = list(info.tasks["rhythm"])
    class_names = dataset_class_names(info, "rhythm")
    test = data["test"]
    with torch.no_grad():
        queries = model.encode_queries(**processor(text=[class_names[n] for n in names], padding=True,
                                                   return_tensors="pt"))
        inputs = processor(ecg=np.asarray(test["ecg"]), sampling_rate=info.sampling_rate, crop="center",
                           lead_names=info.lead_names, return_tensors="pt")
        lead_mask = inputs["lead_mask"] & torch.as_tensor(np.asarray(test["lead_mask"]), dtype=torch.bool)
        probs = model.get_query_logits(inputs["input_values"], lead_mask=lead_mask, time_mask=inputs["time_mask"],
                                       query_embeds=queries).sigmoid().numpy()
    expected = auroc_columns(as_multi_hot(np.asarray(test[label_column("rhythm")]), len(names)), probs)
    got = entry["zero_shot_query_network"]["auroc"]
    assert got == pytest.approx({n: v for n, v in zip(names, expected) if np.isfinite(v)}, abs=1e-6)
    assert any(row["protocol"] == "zero-shot (query network)" for row in report.rows)
