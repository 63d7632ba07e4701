"""``load_ecg_encoder``: the ECG encoder and feature extractor of any cardiomm checkpoint folder, in a fresh process.

Each kind of checkpoint a user may hand to ``cardiomm finetune`` / ``embed`` / ``ood`` is saved here with
``save_pretrained``; a fresh process loads it with ``load_ecg_encoder`` and embeds one ECG; the embedding must equal
that of the ECG encoder of the model saved here (so the right sub-module was found, with its trained weights).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cardiomm.evaluation.checkpoint import find_ecg_encoder
from cardiomm.modeling.configuration_ecg_encoder import ECGEncoderConfig
from cardiomm.modeling.configuration_ecg_ssl import ECGSelfSupervisedConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification, ECGEncoderModel
from cardiomm.modeling.modeling_ecg_ssl import ECGSelfSupervisedModel
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor

LOAD_AND_EMBED = """
import json, sys
import numpy as np, torch
from cardiomm.evaluation.checkpoint import load_ecg_encoder
encoder, fe = load_ecg_encoder(sys.argv[1])
ecg = np.load(sys.argv[2])
inputs = fe(ecg=ecg, sampling_rate=fe.sampling_rate, return_tensors="pt")
with torch.inference_mode():
    out = encoder(input_values=inputs["input_values"], lead_mask=inputs["lead_mask"], time_mask=inputs["time_mask"])
print(json.dumps({"type": type(encoder).__name__, "training": encoder.training,
                  "embedding": out.pooler_output[0].tolist()}))
"""


def encoder_config() -> ECGEncoderConfig:
    return ECGEncoderConfig(backbone="resnet1d_8", stage_channels=[8, 16], stage_depths=[1, 1],
                            stage_kernel_sizes=[5, 3], stage_strides=[2, 2], num_labels=3)


def _moved(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter shifted by noise, so that a freshly initialised encoder cannot match it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def save_encoder(folder: Path) -> torch.nn.Module:
    model = _moved(ECGEncoderModel(encoder_config()), 1)
    model.save_pretrained(folder)
    return model


def save_classifier(folder: Path) -> torch.nn.Module:
    model = _moved(ECGEncoderForSequenceClassification(encoder_config()), 2)
    model.save_pretrained(folder)
    return model.ecg_encoder


def save_self_supervised(folder: Path) -> torch.nn.Module:
    model = _moved(ECGSelfSupervisedModel(ECGSelfSupervisedConfig(ecg_config=encoder_config(), projection_dim=8)), 3)
    model.save_pretrained(folder)
    return model.ecg_model


@pytest.mark.parametrize("save", [save_encoder, save_classifier, save_self_supervised])
def test_a_fresh_process_loads_the_saved_ecg_encoder(tmp_path: Path, save) -> None:
    folder = tmp_path / "checkpoint"
    encoder = save(folder)
    fe = ECGFeatureExtractor(sampling_rate=100, crop_length=250)
    fe.save_pretrained(folder)
    ecg = np.random.default_rng(0).standard_normal((1, 12, 600)).astype(np.float32)
    np.save(tmp_path / "ecg.npy", ecg)
    done = subprocess.run([sys.executable, "-c", LOAD_AND_EMBED, str(folder), str(tmp_path / "ecg.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "UNEXPECTED" not in done.stderr and "MISSING" not in done.stderr, done.stderr  # every weight has its place
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    inputs = fe(ecg=ecg, sampling_rate=100, return_tensors="pt")
    with torch.inference_mode():
        expected = encoder(input_values=inputs["input_values"], lead_mask=inputs["lead_mask"],
                           time_mask=inputs["time_mask"]).pooler_output[0]
    assert loaded["type"] == "ECGEncoderModel" and loaded["training"] is False
    np.testing.assert_allclose(loaded["embedding"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_missing_folder_missing_feature_extractor_and_no_encoder_are_clear_errors(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from cardiomm.evaluation.checkpoint import load_ecg_encoder

    with pytest.raises(ValueError, match="no-such-folder: no such checkpoint folder"):
        load_ecg_encoder(tmp_path / "no-such-folder")
    save_encoder(tmp_path / "weights_only")
    with pytest.raises(ValueError, match=r"weights_only: no ECG feature extractor"):
        load_ecg_encoder(tmp_path / "weights_only")
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=20)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"bert: BertModel must hold exactly one ECG encoder .*it holds none"):
        load_ecg_encoder(tmp_path / "bert")


def test_two_top_level_encoders_are_refused_and_nested_ones_count_once() -> None:
    class TwoTowers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = ECGEncoderModel(encoder_config())
            self.second = ECGEncoderForSequenceClassification(encoder_config())

    with pytest.raises(ValueError, match="it holds first, second.ecg_encoder"):
        find_ecg_encoder(TwoTowers())
    classifier = ECGEncoderForSequenceClassification(encoder_config())
    assert find_ecg_encoder(classifier) is classifier.ecg_encoder
