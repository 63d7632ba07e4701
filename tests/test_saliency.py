"""Saliency of ECG classifiers: Grad-CAM finds a planted feature, attention rollout finds the attended token, and a
whole record's map lands on the record's own time axis and leads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiomm.evaluation.saliency import (
    _AttentionRecorder,
    attention_saliency,
    ecg_saliency,
    grad_cam,
    record_saliency,
)
from cardiomm.modeling.configuration_ecg_encoder import STANDARD_12_LEAD_NAMES, ECGEncoderConfig
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification
from cardiomm.processing.feature_extraction_ecg import ECGFeatureExtractor

RECORD_RATE = 500
V2 = list(STANDARD_12_LEAD_NAMES).index("V2")


def bump_records(n: int, seconds: float, rng: np.random.Generator, bump_at: float | None = None,
                 positive: np.ndarray | None = None) -> np.ndarray:
    """(n, 12, samples) records at 500 Hz: noise (0.2 mV), plus a 3-mV bump (40-ms wide) on V2 in the positive
    ones, at ``bump_at`` seconds or at a random time."""
    t = np.arange(int(seconds * RECORD_RATE)) / RECORD_RATE
    records = rng.standard_normal((n, 12, len(t))).astype(np.float32) * 0.2
    for i in range(n):
        if positive is None or positive[i]:
            centre = bump_at if bump_at is not None else rng.uniform(0.3, seconds - 0.3)
            records[i, V2] += 3.0 * np.exp(-0.5 * ((t - centre) / 0.04) ** 2)
    return records


@pytest.fixture(scope="module")
def feature_extractor() -> ECGFeatureExtractor:
    return ECGFeatureExtractor(sampling_rate=100, crop_length=250, min_length=100)


@pytest.fixture(scope="module")
def bump_detector(feature_extractor: ECGFeatureExtractor) -> ECGEncoderForSequenceClassification:
    """A tiny ResNet trained to tell records with a bump on V2 (class 1) from noise (class 0)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = ECGEncoderConfig(backbone="resnet1d_18", stem_channels=8, stage_channels=[8, 16], stage_depths=[1, 1],
                              stage_kernel_sizes=[3, 3], stage_strides=[1, 2], num_labels=2,
                              problem_type="single_label_classification")
    model = ECGEncoderForSequenceClassification(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        labels = rng.integers(0, 2, 32)
        inputs = feature_extractor(ecg=bump_records(32, 2.5, rng, positive=labels), sampling_rate=RECORD_RATE)
        loss = model(**inputs, labels=torch.as_tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def planted_input(feature_extractor: ECGFeatureExtractor, bump_at: float, seed: int = 5) -> dict:
    return feature_extractor(ecg=bump_records(1, 2.5, np.random.default_rng(seed), bump_at=bump_at),
                             sampling_rate=RECORD_RATE)


@pytest.mark.parametrize("bump_at", [0.7, 1.9])
def test_grad_cam_peaks_where_the_planted_feature_is(bump_detector, feature_extractor, bump_at: float) -> None:
    inputs = planted_input(feature_extractor, bump_at)
    assert torch.softmax(bump_detector(**inputs).logits, -1)[0, 1] > 0.9  # the model found the bump
    saliency = grad_cam(bump_detector, inputs, target=1)
    assert saliency.values.shape == (1, 12, 250) and saliency.class_specific
    course = saliency.values[0].amax(dim=0).numpy()
    centre = int(bump_at * 100)
    window = np.zeros(250, dtype=bool)
    window[centre - 15:centre + 15] = True
    far = np.ones(250, dtype=bool)
    far[centre - 30:centre + 30] = False
    assert abs(int(course.argmax()) - centre) <= 12
    assert course.max() > 2 * course[far].max()  # the peak stands out from everything away from the bump
    assert course[window].mean() > 1.4 * course[~window].mean()
    # gradient x input puts the bump's lead first
    assert int(saliency.values[0].sum(dim=-1).argmax()) == V2


def test_grad_cam_is_zero_on_absent_leads_and_padding(bump_detector, feature_extractor) -> None:
    inputs = dict(planted_input(feature_extractor, 1.0))
    inputs["lead_mask"] = inputs["lead_mask"].clone()
    inputs["lead_mask"][0, 0] = False
    inputs["time_mask"] = inputs["time_mask"].clone()
    inputs["time_mask"][0, 200:] = 0
    values = grad_cam(bump_detector, inputs, target=1).values[0]
    assert values[0].abs().max() == 0 and values[:, 200:].abs().max() == 0
    assert values[V2, :200].max() > 0
    plain = grad_cam(bump_detector, inputs, target=1, lead_relevance=False).values[0]
    assert torch.allclose(plain[1], plain[V2])  # without the lead share every present lead has the time course


def constructed_vit(num_labels: int = 3) -> ECGEncoderForSequenceClassification:
    """A one-layer lead-aware ViT whose every query attends to the token of a patch holding a large positive
    offset (the query is the key direction such a patch's embedding takes)."""
    torch.manual_seed(0)
    config = ECGEncoderConfig(backbone="vit_tiny", hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                              patch_size=50, max_length=500, num_labels=num_labels)
    model = ECGEncoderForSequenceClassification(config).eval()
    with torch.no_grad():
        projection = model.ecg_encoder.encoder.embeddings.patch_projection
        projection.weight.zero_()
        projection.bias.zero_()
        projection.weight[0] = 1.0 / 50  # dimension 0 holds the patch mean
        attention = model.ecg_encoder.encoder.layers[0].attention
        direction = torch.full((8,), -1.0)
        direction[0] = 7.0  # a one-hot vector after layer norm
        attention.q_proj.weight.zero_()
        attention.q_proj.bias.copy_(5 * direction / direction.std(unbiased=False))
        attention.k_proj.weight.copy_(torch.eye(8))
        attention.k_proj.bias.zero_()
    return model


@pytest.mark.parametrize("method", ["rollout", "last_layer"])
def test_attention_saliency_peaks_at_the_attended_lead_and_patch(method: str) -> None:
    model = constructed_vit()
    x = torch.randn(1, 12, 500, generator=torch.Generator().manual_seed(1)) * 0.1
    x[0, 3, 100:150] += 5.0  # lead 3 (aVR), patch 2
    lead_mask = torch.ones(1, 12, dtype=torch.bool)
    lead_mask[0, 5] = False
    saliency = attention_saliency(model, {"input_values": x, "lead_mask": lead_mask}, method=method)
    values = saliency.values[0]
    assert values.shape == (12, 500) and not saliency.class_specific
    assert divmod(int(values.argmax()), 500)[0] == 3 and 100 <= int(values.argmax()) % 500 < 150
    assert values[3, 100:150].mean() > 10 * values.mean()
    assert values[5].abs().max() == 0  # absent lead
    moved = x.clone()
    moved[0, 3, 100:150] -= 5.0
    moved[0, 8, 400:450] += 5.0  # the feature on V3, patch 8: the map follows it
    values = attention_saliency(model, {"input_values": moved}, method=method).values[0]
    assert divmod(int(values.argmax()), 500)[0] == 8 and int(values.argmax()) % 500 >= 400


def test_recorded_attention_is_the_attention_the_layer_uses() -> None:
    torch.manual_seed(0)
    config = ECGEncoderConfig(backbone="vit_tiny", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              patch_size=50, max_length=500, num_labels=2)
    model = ECGEncoderForSequenceClassification(config).eval()
    layer = model.ecg_encoder.encoder.layers[1].attention
    captured = {}
    layer.register_forward_hook(lambda module, args, output: captured.update(args=args, output=output))
    recorder = _AttentionRecorder(model.ecg_encoder.encoder.layers)
    lead_mask = torch.ones(2, 12, dtype=torch.bool)
    lead_mask[1, :4] = False
    with torch.no_grad():
        model(input_values=torch.randn(2, 12, 300), lead_mask=lead_mask)
    recorder.remove()
    hidden, mask = captured["args"]
    _, _, value = layer.project_qkv(hidden)
    attended = (recorder.probabilities[1] @ value).transpose(1, 2).reshape(hidden.shape)
    assert torch.allclose(layer.out_proj(attended), captured["output"], atol=1e-5)
    assert len(recorder.probabilities) == 2 and not layer._forward_pre_hooks  # removed


def test_ecg_saliency_chooses_the_method_by_encoder(bump_detector, feature_extractor) -> None:
    inputs = planted_input(feature_extractor, 1.0)
    resnet = ecg_saliency(bump_detector, inputs, 1)
    assert resnet.method.startswith("Grad-CAM") and resnet.class_specific and resnet.target.tolist() == [1]
    vit = ecg_saliency(constructed_vit(), {"input_values": torch.randn(2, 12, 500)}, 2)
    assert "rollout" in vit.method and not vit.class_specific and vit.target.tolist() == [2, 2]
    with pytest.raises(ValueError, match="ResNet"):
        grad_cam(constructed_vit(), {"input_values": torch.randn(1, 12, 500)}, 0)
    with pytest.raises(ValueError, match="ViT"):
        attention_saliency(bump_detector, inputs)


def test_record_saliency_lands_on_the_record_time_axis_and_leads(bump_detector, feature_extractor) -> None:
    record = bump_records(1, 10.0, np.random.default_rng(3), bump_at=7.0)[0]
    # the record's leads in another order, V5 missing
    names = [n for n in reversed(STANDARD_12_LEAD_NAMES) if n != "V5"]
    rows = [list(STANDARD_12_LEAD_NAMES).index(n) for n in names]
    explained = record_saliency(bump_detector, feature_extractor, record[rows], RECORD_RATE, names)
    assert explained.values.shape == (11, 5000) and explained.windows == 7  # 2.5-s windows at 1.25-s stride
    assert explained.target == 1 and explained.probabilities[1] > 0.5
    assert explained.values.max() == pytest.approx(1.0)
    row, sample = divmod(int(explained.values.argmax()), 5000)
    assert names[row] == "V2"
    assert abs(sample / RECORD_RATE - 7.0) < 0.12
    course = explained.values.max(axis=0)
    assert course[3400:3600].mean() > 3 * np.concatenate([course[:3000], course[4000:]]).mean()
    # the other class is explained when asked for
    other = record_saliency(bump_detector, feature_extractor, record[rows], RECORD_RATE, names, target=0)
    assert other.target == 0 and not np.allclose(other.values, explained.values)
    with pytest.raises(ValueError, match="out of range"):
        record_saliency(bump_detector, feature_extractor, record[rows], RECORD_RATE, names, target=5)


def test_record_saliency_pads_a_record_shorter_than_the_model_input(bump_detector) -> None:
    extractor = ECGFeatureExtractor(sampling_rate=100, crop_length=400, min_length=100)
    record = bump_records(1, 2.0, np.random.default_rng(4), bump_at=1.2)[0]
    explained = record_saliency(bump_detector, extractor, record, RECORD_RATE, list(STANDARD_12_LEAD_NAMES))
    assert explained.values.shape == (12, 1000) and explained.windows == 1
    assert abs(int(explained.values[V2].argmax()) / RECORD_RATE - 1.2) < 0.12
    # a map upsampled from the model's rate follows the record's samples smoothly
    assert np.abs(np.diff(explained.values[V2])).max() < 0.2
