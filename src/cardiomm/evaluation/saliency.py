"""Where an ECG classifier looks: saliency over leads and time for one class.

What each encoder family gets (:func:`ecg_saliency` picks it):

- **ResNets** (``resnet1d_*``): Grad-CAM on the last convolutional feature map (the output of the last stage): the
  gradient of the class logit, averaged over time, weights each channel; the ReLU of the weighted channel sum is
  the time course, linearly upsampled to the input's samples. The first convolution mixes all leads, so the
  feature map has no lead axis: each lead's share comes from gradient × input (the sum over time of
  ``|x * d logit / dx|`` of that lead, scaled so the largest lead is 1), and the map is the time course times
  the lead share.
- **Lead-aware ViT** (``vit_*``): attention rollout. Per layer the attention probabilities are averaged over the
  heads, the residual path is added as an identity (``0.5 A + 0.5 I``, rows renormalised), and the layers are
  multiplied; the relevance of a token is the mean of its column over the tokens of present leads (the ECG
  embedding is the mean of those tokens), minus the share every token would get from evenly spread attention
  (1 / number of attended tokens; negative values are 0), so evenly spread attention gives an empty map.
  ``method="last_layer"`` uses the last layer's head-averaged attention alone. Tokens are lead × patch, so the
  map is per lead and time (constant over each patch). Attention does not depend on the class: the map is the
  same for every target.
- **MERL's ViT** (``merl_vit_*``): attention rollout over its patch tokens (time only), the same for every lead
  that was recorded.

Maps are non-negative, zero on absent leads and on padding, and not normalised (the scale is the method's own).
:func:`record_saliency` runs a classifier over a whole record as its feature extractor prepares it and maps the
saliency back to the record's own samples and leads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Saliency methods of :func:`attention_saliency`.
ATTENTION_METHODS: tuple[str, ...] = ("rollout", "last_layer")


@dataclass
class ECGSaliency:
    """Saliency of a batch: ``values`` (batch, leads, time) >= 0 on the model input's samples, ``target`` the
    class index explained per ECG, ``method`` what was computed (one line), ``class_specific`` whether the map
    depends on the target."""

    values: torch.Tensor
    target: torch.Tensor
    method: str
    class_specific: bool


def _targets(target: int | Sequence[int] | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``target`` as a (batch,) long tensor."""
    tensor = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
    if tensor.numel() == 1:
        tensor = tensor.expand(batch_size)
    if tensor.numel() != batch_size:
        raise ValueError(f"target must be one class index or one per ECG ({batch_size}), got {tensor.numel()}")
    return tensor.clone()


def _model_inputs(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``input_values`` (float tensor), ``lead_mask`` (bool) and ``time_mask`` of a feature extractor's output."""
    values = torch.as_tensor(inputs["input_values"]).float()
    lead_mask = inputs.get("lead_mask")
    time_mask = inputs.get("time_mask")
    lead_mask = None if lead_mask is None else torch.as_tensor(lead_mask).bool()
    time_mask = None if time_mask is None else torch.as_tensor(time_mask)
    if values.dim() != 3:
        raise ValueError(f"input_values must have shape (batch, leads, time); got {tuple(values.shape)} (pass one "
                         "window per ECG, not crop='windows' output)")
    return values, lead_mask, time_mask


def _mask_values(values: torch.Tensor, lead_mask: torch.Tensor | None, time_mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` (batch, leads, time) with absent leads and padded samples set to zero."""
    if lead_mask is not None:
        values = values * lead_mask[:, :, None].to(values.dtype)
    if time_mask is not None:
        values = values * time_mask[:, None, :].to(values.dtype)
    return values


def _encoder_family(model: Any) -> str:
    family = getattr(getattr(model, "config", None), "backbone_family", None)
    if family is None or not hasattr(model, "ecg_encoder"):
        raise ValueError(f"{type(model).__name__} is not an ECG encoder classifier "
                         "(ECGEncoderForSequenceClassification)")
    return family


def grad_cam(
    model: Any, inputs: Mapping[str, Any], target: int | Sequence[int] | torch.Tensor, lead_relevance: bool = True
) -> ECGSaliency:
    """Grad-CAM of a ResNet classifier for class ``target`` on its last convolutional feature map, upsampled to the
    input samples; with ``lead_relevance`` times each lead's gradient × input share (see the module docstring),
    otherwise the same time course on every present lead.

    ``model``: an ``ECGEncoderForSequenceClassification`` with a ``resnet1d`` backbone; ``inputs``: its feature
    extractor's output (``input_values`` (batch, leads, time), ``lead_mask``, ``time_mask``).
    """
    if _encoder_family(model) != "resnet1d":
        raise ValueError(f"grad_cam needs a ResNet encoder; this one is {model.config.backbone!r}")
    values, lead_mask, time_mask = _model_inputs(inputs)
    parameter = next(model.parameters())
    values = values.to(parameter.device, parameter.dtype).requires_grad_(True)
    lead_mask = None if lead_mask is None else lead_mask.to(parameter.device)
    time_mask = None if time_mask is None else time_mask.to(parameter.device)
    target = _targets(target, values.shape[0], values.device)
    with torch.enable_grad():
        outputs = model(input_values=values, lead_mask=lead_mask, time_mask=time_mask, output_hidden_states=True,
                        return_dict=True)
        feature_map = outputs.hidden_states[-1]  # (batch, time', channels), on the path to the logits
        score = outputs.logits.gather(1, target[:, None]).sum()
        feature_grad, input_grad = torch.autograd.grad(score, (feature_map, values))
    weights = feature_grad.mean(dim=1, keepdim=True)  # (batch, 1, channels)
    cam = F.relu((feature_map.detach() * weights).sum(dim=-1))  # (batch, time')
    cam = F.interpolate(cam[:, None], size=values.shape[-1], mode="linear", align_corners=False)  # (batch, 1, time)
    present = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device) if lead_mask is None else lead_mask
    if lead_relevance:
        share = (input_grad * values.detach()).abs().sum(dim=-1) * present  # (batch, leads)
        top = share.amax(dim=1, keepdim=True)
        share = torch.where(top > 0, share / top.clamp(min=torch.finfo(share.dtype).tiny), present.to(share.dtype))
        method = "Grad-CAM (last conv. feature map) × per-lead gradient × input"
    else:
        share = present.to(cam.dtype)
        method = "Grad-CAM (last conv. feature map)"
    saliency = _mask_values(cam * share[:, :, None], lead_mask, time_mask)
    return ECGSaliency(saliency.detach().float().cpu(), target.cpu(), method, class_specific=True)


class _AttentionRecorder:
    """Records the attention probabilities of every ``ECGViTAttention`` layer of an encoder during a forward pass
    (recomputed from the layer's own query / key projections and mask, as scaled dot-product attention uses
    them)."""

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        self.probabilities: list[torch.Tensor] = []
        self.handles = [layer.attention.register_forward_pre_hook(self._record) for layer in layers]

    def _record(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        hidden_states, attention_mask = args[0], args[1] if len(args) > 1 else None
        query, key, _ = module.project_qkv(hidden_states)
        scores = query @ key.transpose(-1, -2) / module.head_dim**0.5
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool(), float("-inf"))
        self.probabilities.append(torch.softmax(scores.float(), dim=-1))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def attention_saliency(model: Any, inputs: Mapping[str, Any], method: str = "rollout") -> ECGSaliency:
    """Attention saliency of a ViT classifier (``method`` ``"rollout"`` or ``"last_layer"``, see the module
    docstring) on the input samples: per lead and patch for the lead-aware ViT, per patch (same on every present
    lead) for MERL's ViT. Class-agnostic (``target`` of the result is -1)."""
    family = _encoder_family(model)
    if family not in ("vit", "merl_vit"):
        raise ValueError(f"attention_saliency needs a ViT encoder; this one is {model.config.backbone!r}")
    if method not in ATTENTION_METHODS:
        raise ValueError(f"method must be one of {ATTENTION_METHODS}, got {method!r}")
    values, lead_mask, time_mask = _model_inputs(inputs)
    parameter = next(model.parameters())
    values = values.to(parameter.device, parameter.dtype)
    lead_mask = None if lead_mask is None else lead_mask.to(parameter.device)
    time_mask = None if time_mask is None else time_mask.to(parameter.device)
    network = model.ecg_encoder.encoder
    recorder = _AttentionRecorder(network.layers)
    try:
        with torch.no_grad():
            outputs = model.ecg_encoder(values, lead_mask=lead_mask, time_mask=time_mask, return_dict=True)
    finally:
        recorder.remove()
    batch_size, num_leads, length = values.shape
    num_tokens = outputs.last_hidden_state.shape[1]
    token_mask = outputs.token_mask
    if token_mask is None:
        token_mask = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=values.device)
    eye = torch.eye(num_tokens, device=values.device)
    if method == "rollout":
        rollout = eye.expand(batch_size, num_tokens, num_tokens)
        for probabilities in recorder.probabilities:
            mixed = 0.5 * probabilities.mean(dim=1) + 0.5 * eye
            rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
        matrix, what = rollout, "attention rollout (all layers, heads averaged, residual as identity)"
    else:
        matrix, what = recorder.probabilities[-1].mean(dim=1), "last-layer attention (heads averaged)"
    queries = token_mask.to(matrix.dtype)
    attended = queries.sum(dim=1, keepdim=True).clamp(min=1)
    relevance = (queries[:, :, None] * matrix).sum(dim=1) / attended
    relevance = F.relu(relevance - 1.0 / attended) * token_mask  # above the uniform share; (batch, tokens)
    patch_size = network.patch_size
    if family == "vit":
        grid = relevance.reshape(batch_size, num_leads, num_tokens // num_leads)
    else:
        grid = relevance[:, None, :].expand(batch_size, num_leads, num_tokens)
        what += ", per patch (the same on every recorded lead)"
    saliency = _mask_values(grid.repeat_interleave(patch_size, dim=-1)[..., :length], lead_mask, time_mask)
    target = torch.full((batch_size,), -1, dtype=torch.long)
    return ECGSaliency(saliency.float().cpu(), target, what, class_specific=False)


def ecg_saliency(model: Any, inputs: Mapping[str, Any], target: int | Sequence[int] | torch.Tensor) -> ECGSaliency:
    """The saliency of ``model`` (an ``ECGEncoderForSequenceClassification``) for class ``target`` on ``inputs``:
    Grad-CAM × gradient × input for ResNets, attention rollout for the ViTs (class-agnostic; ``target`` is
    recorded in the result)."""
    if _encoder_family(model) == "resnet1d":
        return grad_cam(model, inputs, target)
    result = attention_saliency(model, inputs)
    result.target = _targets(target, result.values.shape[0], torch.device("cpu"))
    return result


@dataclass
class RecordSaliency:
    """:func:`record_saliency` of one record: ``values`` (record leads, record samples) in [0, 1] (1 = the largest
    value of the map), ``probabilities`` per class (mean over the windows the model read), ``target`` the class
    explained, ``method`` what the map shows, and ``model_leads`` which record leads the model read."""

    values: np.ndarray
    probabilities: np.ndarray
    target: int
    method: str
    class_specific: bool
    model_leads: list[bool] = field(default_factory=list)
    windows: int = 1


def _window_length(model: Any, feature_extractor: Any, available: int) -> int:
    """Samples per model input: the feature extractor's ``crop_length`` (the record's length without one), cut to
    what a ViT accepts (a multiple of its patch size, at most its ``max_length``)."""
    length = feature_extractor.crop_length or available
    config = model.config
    if config.backbone_family in ("vit", "merl_vit"):
        length = min(length, config.max_length)
        length = max(length - length % config.patch_size, config.patch_size)
    return max(int(length), 1)


def _class_probabilities(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """Softmax for single-label classifiers, sigmoid otherwise."""
    if getattr(model.config, "problem_type", None) == "single_label_classification":
        return torch.softmax(logits, dim=-1)
    return torch.sigmoid(logits)


def record_saliency(
    model: Any,
    feature_extractor: Any,
    signal: np.ndarray,
    sampling_rate: float,
    lead_names: Sequence[str],
    target: int | None = None,
    batch_size: int = 16,
) -> RecordSaliency:
    """Class probabilities and saliency of a classifier on a whole record, on the record's own samples.

    The feature extractor prepares the record as for the model (lead selection, resampling, normalisation over
    the record); the prepared record is cut into windows of the model's input length (``crop_length``) at half a
    window's stride, the last one ending at the record's end. Probabilities are the mean over the windows;
    ``target`` (default: the most probable class) is explained in every window (:func:`ecg_saliency`), overlapping
    windows averaged, and the map is interpolated from the feature extractor's rate back to ``sampling_rate`` and
    from the model's leads to ``lead_names`` (a lead the model does not read gets zeros).
    """
    from ..processing.ecg_records import canonical_lead_name

    signal = np.asarray(signal, dtype=np.float32)
    prepared = feature_extractor(ecg=signal, sampling_rate=sampling_rate, lead_names=list(lead_names), crop="none",
                                 return_tensors="pt")
    values, lead_mask, time_mask = prepared["input_values"], prepared["lead_mask"], prepared["time_mask"]
    total = values.shape[-1]
    length = _window_length(model, feature_extractor, total)
    if total < length:
        values = F.pad(values, (0, length - total), value=float(feature_extractor.padding_value))
        time_mask = F.pad(time_mask, (0, length - total), value=0)
    padded = values.shape[-1]
    starts = list(range(0, padded - length + 1, max(length // 2, 1)))
    if starts[-1] != padded - length:
        starts.append(padded - length)
    windows = {
        "input_values": torch.stack([values[0, :, s:s + length] for s in starts]),
        "lead_mask": lead_mask.expand(len(starts), -1),
        "time_mask": torch.stack([time_mask[0, s:s + length] for s in starts]),
    }
    parameter = next(model.parameters())
    probabilities = []
    with torch.no_grad():
        for begin in range(0, len(starts), batch_size):
            part = {key: value[begin:begin + batch_size].to(parameter.device) for key, value in windows.items()}
            logits = model(**part, return_dict=True).logits
            probabilities.append(_class_probabilities(model, logits.float()).cpu())
    mean_probabilities = torch.cat(probabilities).mean(dim=0).numpy()
    if target is None:
        target = int(mean_probabilities.argmax())
    if not 0 <= target < len(mean_probabilities):
        raise ValueError(f"class index {target} is out of range: the model has {len(mean_probabilities)} classes")
    summed = torch.zeros(values.shape[1], padded)
    counts = torch.zeros(padded)
    explained: ECGSaliency | None = None
    for begin in range(0, len(starts), batch_size):
        part = {key: value[begin:begin + batch_size] for key, value in windows.items()}
        explained = ecg_saliency(model, part, target)
        for offset, start in enumerate(starts[begin:begin + batch_size]):
            summed[:, start:start + length] += explained.values[offset]
            counts[start:start + length] += 1
    averaged = (summed / counts.clamp(min=1)).numpy()[:, :total]
    top = float(averaged.max(initial=0.0))
    if top > 0:
        averaged = averaged / top
    model_rate = float(feature_extractor.sampling_rate)
    model_times = np.arange(total) / model_rate
    record_times = np.arange(signal.shape[-1]) / float(sampling_rate)
    index = {name: i for i, name in enumerate(feature_extractor.lead_names)}
    out = np.zeros(signal.shape, dtype=np.float32)
    read = []
    for row, name in enumerate(lead_names):
        column = index.get(canonical_lead_name(name))
        read.append(column is not None and bool(lead_mask[0, column]))
        if read[-1]:
            out[row] = np.interp(record_times, model_times, averaged[column])
    return RecordSaliency(out, mean_probabilities, target, explained.method, explained.class_specific, read,
                          windows=len(starts))
