"""CLERC: one encoder per diagnostic modality and one text encoder for every report type, in one joint space.

Towers (on the contrastive core, [`ECGContrastiveModel`]: building, locking, pooling, temperature):

* `ecg_model`: the ECG encoder ([`ECGEncoderModel`], a 1D ResNet by default);
* `echo_model`, `angiogram_model`: R(2+1)D video encoders ([`R2Plus1DVideoModel`]), separate weights;
* `chest_xray_model`: CLIP's vision transformer (`CLIPVisionModel`, pooled class token);
* `text_model`: one text encoder (`CLIPTextModel` by default, pooled end-of-text token) for the ECG, echo,
  angiogram and chest X-ray reports alike.

Each is mapped by its own bias-free linear projection (`ecg_projection`, `echo_projection`, `angiogram_projection`,
`chest_xray_projection`, `text_projection`, CLIP style) to `projection_dim` (512) dimensions and L2-normalised.

A batch holds `B` patients; each modality comes with a `(B,)` mask of the patients who have it. Only the rows of
those patients go through the modality's encoder (filler rows are never encoded); the other rows of the returned
embeddings are zeros. The loss is the sum over every pair of distinct modalities with at least two patients having
both (over all processes when distributed) of the CLIP loss of those patients (`multimodal_clip_loss`), at the
learned temperature.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput, logging

from .configuration_clerc import (
    CLERC_DIAGNOSTIC_MODALITIES,
    CLERC_MODALITIES,
    CLERC_REPORT_MODALITIES,
    CLERC_VIDEO_MODALITIES,
    CLERCMultiEncoderConfig,
)
from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_r2plus1d import R2Plus1DConfig
from .contrastive_losses import multimodal_clip_loss
from .modeling_ecg_contrastive import ECGContrastiveModel, build_projection, return_dict_of, tower_options
from .modeling_ecg_encoder import ECGEncoderModel, ECGEncoderOutput
from .modeling_r2plus1d import R2Plus1DVideoModel

logger = logging.get_logger(__name__)


@dataclass
class CLERCOutput(ModelOutput):
    """
    Output of [`CLERCMultiEncoder`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when `return_loss=True`):
            Sum of the CLIP losses of every pair of modalities with at least two patients having both.
        pair_losses (`torch.FloatTensor` of shape (8, 8), *optional*, returned when `return_loss=True`):
            The CLIP loss of each pair, in the order of `CLERC_MODALITIES` (symmetric; 0 on the diagonal and for
            pairs without a loss). Distributed: this process's share, whose mean over processes is the pair's loss.
        pair_counts (`torch.LongTensor` of shape (8, 8), *optional*, returned when `return_loss=True`):
            Patients having both modalities (over every process), the diagonal: patients having the modality.
        ecg_embeds, echo_embeds, angiogram_embeds, chest_xray_embeds, ecg_report_embeds, echo_report_embeds,
        angiogram_report_embeds, chest_xray_report_embeds (`torch.FloatTensor` of shape (batch, projection_dim)):
            L2-normalised embeddings of each modality; zero rows for the patients without it (every row when its
            input is not given).
        logit_scale (`torch.FloatTensor` of shape ()):
            The inverse temperature the cosine similarities are multiplied by: `exp(logit_scale)` (capped at 100),
            what zero-shot prediction scales its similarities with.
        ecg_model_output, echo_model_output, angiogram_model_output, chest_xray_model_output (`ModelOutput`,
        *optional*): the towers' outputs for the rows they encoded (absent when the modality is).
        text_model_output (`ModelOutput`, *optional*): the text tower's output for every report it encoded, patient
            by patient (the reports of patient 0 in `CLERC_MODALITIES` order, then patient 1, ...).
    """

    loss: torch.FloatTensor | None = None
    pair_losses: torch.FloatTensor | None = None
    pair_counts: torch.LongTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    echo_embeds: torch.FloatTensor | None = None
    angiogram_embeds: torch.FloatTensor | None = None
    chest_xray_embeds: torch.FloatTensor | None = None
    ecg_report_embeds: torch.FloatTensor | None = None
    echo_report_embeds: torch.FloatTensor | None = None
    angiogram_report_embeds: torch.FloatTensor | None = None
    chest_xray_report_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    ecg_model_output: ECGEncoderOutput | None = None
    echo_model_output: ModelOutput | None = None
    angiogram_model_output: ModelOutput | None = None
    chest_xray_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if not k.endswith("_model_output") else getattr(self, k).to_tuple() for k in self.keys()
        )


def _present_rows(mask: torch.Tensor | None, batch_size: int, name: str) -> torch.Tensor | None:
    """Indices of the rows whose `mask` is True; `None` when every row is (no mask, or an all-True one)."""
    if mask is None:
        return None
    if mask.shape != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},) (one entry per patient), got {tuple(mask.shape)}")
    mask = mask.to(torch.bool)
    if bool(mask.all()):
        return None
    return mask.nonzero().squeeze(1)


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """`rows` (n, D) placed at the rows `index` of a (batch_size, D) tensor of zeros (`rows` itself for `None`)."""
    if index is None:
        return rows
    return rows.new_zeros(batch_size, rows.shape[1]).index_copy(0, index, rows)


class CLERCMultiEncoder(ECGContrastiveModel):
    """CLERC multimodal contrastive model (ECG, echocardiogram, angiogram, chest X-ray and their reports).

    Args:
        config: the model configuration.
        ecg_model / echo_model / angiogram_model / chest_xray_model / text_model: existing towers to use instead of
            building them from the sub-configurations.
    """

    config_class = CLERCMultiEncoderConfig
    config: CLERCMultiEncoderConfig
    base_model_prefix = "clerc"
    main_input_name = "ecg_values"
    input_modalities = ("ecg", "video", "image", "text")
    tower_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {
        "echo": R2Plus1DVideoModel, "angiogram": R2Plus1DVideoModel, "chest_xray": CLIPVisionModel,
    }

    def __init__(
        self,
        config: CLERCMultiEncoderConfig,
        ecg_model: ECGEncoderModel | None = None,
        echo_model: R2Plus1DVideoModel | None = None,
        angiogram_model: R2Plus1DVideoModel | None = None,
        chest_xray_model: CLIPVisionModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        partners = {"echo": echo_model, "angiogram": angiogram_model, "chest_xray": chest_xray_model,
                    "text": text_model}
        super().__init__(config, ecg_model=ecg_model, partner_models=partners)
        self.ecg_projection = build_projection(config.ecg_config.hidden_size, config, "ecg")
        for modality in self.partner_modalities:
            hidden_size = getattr(config, f"{modality}_config").hidden_size
            setattr(self, f"{modality}_projection", build_projection(hidden_size, config, modality))
        self.init_logit_scale()
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`; refused when a video tower has its batch norms fused for inference
        (`fuse_batch_norm()`: its parameters no longer match the checkpoint layout)."""
        fused = [m for m in CLERC_VIDEO_MODALITIES if getattr(self.tower(m), "batch_norm_fused", False)]
        if fused:
            raise ValueError(f"the {' and '.join(fused)} tower has its batch norms fused for inference "
                             "(fuse_batch_norm()); save the model before fusing, or load it again")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        """The token embeddings of the text tower."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    # ------------------------------------------------------------------------------------------------ features
    def get_video_features(
        self,
        modality: str,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The output of the `modality` (`"echo"` or `"angiogram"`) R(2+1)D tower with `pooler_output` replaced by the
        projected embedding, (batch, projection_dim), *not* L2-normalised (transformers' `get_image_features`
        convention).

        Args:
            modality: `"echo"` or `"angiogram"`.
            pixel_values: clips, (batch, 3, frames, height, width).
        """
        if modality not in CLERC_VIDEO_MODALITIES:
            raise ValueError(f"modality must be one of {CLERC_VIDEO_MODALITIES}, got {modality!r}")
        return self.get_partner_features(modality, {"pixel_values": pixel_values}, output_hidden_states, None,
                                         return_dict)

    def get_chest_xray_features(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The chest X-ray tower's output with `pooler_output` replaced by the projected embedding, (batch,
        projection_dim), *not* L2-normalised.

        Args:
            pixel_values: images, (batch, 3, height, width).
        """
        return self.get_partner_features("chest_xray", {"pixel_values": pixel_values}, output_hidden_states,
                                         output_attentions, return_dict)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """The text tower's output with `pooler_output` replaced by the projected report embedding, (batch,
        projection_dim), *not* L2-normalised; the same for every report type (the text tower is shared).

        Args:
            input_ids: token ids, (batch, tokens).
            attention_mask: (batch, tokens), 1 for real tokens and 0 for padding.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.get_partner_features("text", inputs, output_hidden_states, output_attentions, return_dict)

    def get_modality_features(
        self,
        modality: str,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **inputs: torch.Tensor | None,
    ) -> ModelOutput | tuple:
        """The projected, *not* L2-normalised, embeddings (batch, projection_dim) of one modality, as the
        `pooler_output` of its tower's output.

        Args:
            modality: a name of `CLERC_MODALITIES`.
            inputs: that modality's inputs without the `<modality>_` prefix: `values` (with `lead_mask` and
                `time_mask`, both optional, for `"ecg"`) for a diagnostic modality; `input_ids` and
                `attention_mask` for a report type.
        """
        if modality not in CLERC_MODALITIES:
            raise ValueError(f"modality must be one of {CLERC_MODALITIES}, got {modality!r}")
        allowed = {"ecg": ("values", "lead_mask", "time_mask")}.get(
            modality, ("input_ids", "attention_mask") if modality in CLERC_REPORT_MODALITIES else ("values",)
        )
        unknown = sorted(set(inputs) - set(allowed))
        required = allowed[0]
        if unknown or inputs.get(required) is None:
            raise ValueError(f"{modality} features take {', '.join(allowed)} ({required} required), got "
                             f"{', '.join(sorted(inputs)) or 'nothing'}")
        if modality == "ecg":
            return self.get_ecg_features(inputs["values"], inputs.get("lead_mask"), inputs.get("time_mask"),
                                         output_hidden_states=output_hidden_states, return_dict=return_dict)
        if modality in CLERC_REPORT_MODALITIES:
            return self.get_text_features(inputs["input_ids"], inputs.get("attention_mask"),
                                          output_hidden_states=output_hidden_states, return_dict=return_dict)
        return self.get_partner_features(modality, {"pixel_values": inputs["values"]}, output_hidden_states, None,
                                         return_dict)

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        ecg_values: torch.Tensor | None = None,
        ecg_lead_mask: torch.Tensor | None = None,
        ecg_time_mask: torch.Tensor | None = None,
        ecg_mask: torch.Tensor | None = None,
        echo_values: torch.Tensor | None = None,
        echo_mask: torch.Tensor | None = None,
        angiogram_values: torch.Tensor | None = None,
        angiogram_mask: torch.Tensor | None = None,
        chest_xray_values: torch.Tensor | None = None,
        chest_xray_mask: torch.Tensor | None = None,
        ecg_report_input_ids: torch.Tensor | None = None,
        ecg_report_attention_mask: torch.Tensor | None = None,
        ecg_report_mask: torch.Tensor | None = None,
        echo_report_input_ids: torch.Tensor | None = None,
        echo_report_attention_mask: torch.Tensor | None = None,
        echo_report_mask: torch.Tensor | None = None,
        angiogram_report_input_ids: torch.Tensor | None = None,
        angiogram_report_attention_mask: torch.Tensor | None = None,
        angiogram_report_mask: torch.Tensor | None = None,
        chest_xray_report_input_ids: torch.Tensor | None = None,
        chest_xray_report_attention_mask: torch.Tensor | None = None,
        chest_xray_report_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLERCOutput | tuple:
        """
        Args:
            ecg_values (`torch.FloatTensor` of shape (batch, num_leads, time), *optional*): ECGs.
            ecg_lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            ecg_time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded samples.
            echo_values / angiogram_values (`torch.FloatTensor` of shape (batch, 3, frames, height, width),
                *optional*): echocardiogram / angiogram clips.
            chest_xray_values (`torch.FloatTensor` of shape (batch, 3, height, width), *optional*): chest X-rays.
            <report>_input_ids / <report>_attention_mask (`torch.LongTensor` of shape (batch, tokens), *optional*):
                the tokenised reports of each type (`ecg_report`, `echo_report`, `angiogram_report`,
                `chest_xray_report`).
            <modality>_mask (`torch.BoolTensor` of shape (batch,), *optional*): True for the patients who have the
                modality; their rows alone are encoded. `None`: every patient has it. A modality whose inputs are
                `None` is absent for every patient.
            return_loss (`bool`, defaults to `True`): compute the loss, `pair_losses` and `pair_counts`.
            output_hidden_states / output_attentions (`bool`, *optional*): also return the towers' hidden states /
                attentions (in `<tower>_model_output`).
            return_dict (`bool`, *optional*): return a [`CLERCOutput`] instead of a tuple.
        """
        return_dict = return_dict_of(self.config, return_dict)
        values = {"ecg": ecg_values, "echo": echo_values, "angiogram": angiogram_values,
                  "chest_xray": chest_xray_values}
        report_ids = {"ecg_report": ecg_report_input_ids, "echo_report": echo_report_input_ids,
                      "angiogram_report": angiogram_report_input_ids,
                      "chest_xray_report": chest_xray_report_input_ids}
        report_attention = {"ecg_report": ecg_report_attention_mask, "echo_report": echo_report_attention_mask,
                            "angiogram_report": angiogram_report_attention_mask,
                            "chest_xray_report": chest_xray_report_attention_mask}
        masks = {"ecg": ecg_mask, "echo": echo_mask, "angiogram": angiogram_mask, "chest_xray": chest_xray_mask,
                 "ecg_report": ecg_report_mask, "echo_report": echo_report_mask,
                 "angiogram_report": angiogram_report_mask, "chest_xray_report": chest_xray_report_mask}
        inputs = {**values, **report_ids}
        given = [inputs[m] for m in CLERC_MODALITIES if inputs[m] is not None]
        if not given:
            raise ValueError(f"no input: pass the values or input ids of at least one of {CLERC_MODALITIES}")
        batch_size = given[0].shape[0]
        for modality in CLERC_MODALITIES:
            tensor = inputs[modality]
            if tensor is not None and tensor.shape[0] != batch_size:
                raise ValueError(
                    f"every input holds the same {batch_size} patients; {modality} holds {tensor.shape[0]}"
                )
            if tensor is None and masks[modality] is not None and bool(masks[modality].any()):
                raise ValueError(
                    f"{modality}_mask marks patients as having {modality}, but no {modality} input is given"
                )

        tower_kwargs = tower_options(output_hidden_states, output_attentions)
        embeds: dict[str, torch.Tensor] = {}
        loss_masks: dict[str, torch.Tensor | None] = {}
        tower_outputs: dict[str, ModelOutput] = {}
        for modality in CLERC_DIAGNOSTIC_MODALITIES:
            if values[modality] is None:
                continue
            index = _present_rows(masks[modality], batch_size, f"{modality}_mask")
            select = (lambda t: t) if index is None else (lambda t: None if t is None else t[index])
            if index is not None and index.numel() == 0:
                continue
            if modality == "ecg":
                outputs = self.encode_ecg(select(ecg_values), select(ecg_lead_mask), select(ecg_time_mask),
                                          **tower_options(output_hidden_states))
                projected = self.project_ecg_output(outputs, select(ecg_time_mask))[0]
            else:
                options = tower_kwargs if modality == "chest_xray" else tower_options(output_hidden_states)
                pooled, outputs = self.encode_partner(modality, {"pixel_values": select(values[modality])}, **options)
                projected = getattr(self, f"{modality}_projection")(pooled)
            tower_outputs[modality] = outputs
            embeds[modality] = _scatter_rows(F.normalize(projected, dim=-1), index, batch_size)
            loss_masks[modality] = None if index is None else masks[modality]

        reports = [r for r in CLERC_REPORT_MODALITIES if report_ids[r] is not None]
        if reports:
            text_embeds, text_outputs, report_masks = self._encode_reports(
                reports, report_ids, report_attention, masks, batch_size, tower_kwargs
            )
            embeds.update(text_embeds)
            loss_masks.update(report_masks)
            if text_outputs is not None:
                tower_outputs["text"] = text_outputs

        reference = next(iter(embeds.values()), None)
        if reference is None:  # every given modality had a mask without any patient
            reference = self.ecg_projection[0].weight.new_zeros(batch_size, self.config.projection_dim)
        for modality in CLERC_MODALITIES:
            if modality not in embeds:
                embeds[modality] = reference.new_zeros(batch_size, self.config.projection_dim)
                loss_masks[modality] = torch.zeros(batch_size, dtype=torch.bool, device=reference.device)
        embeds = {m: embeds[m] for m in CLERC_MODALITIES}

        logit_scale = self.scale()
        loss = pair_losses = pair_counts = None
        if return_loss:
            loss, pair_losses, pair_counts = multimodal_clip_loss(embeds, loss_masks, logit_scale)
        output = CLERCOutput(
            loss=loss,
            pair_losses=pair_losses,
            pair_counts=pair_counts,
            **{f"{m}_embeds": embeds[m] for m in CLERC_MODALITIES},
            logit_scale=logit_scale.reshape(()),
            **{f"{m}_model_output": tower_outputs.get(m) for m in (*CLERC_DIAGNOSTIC_MODALITIES, "text")},
        )
        return output if return_dict else output.to_tuple()

    def _encode_reports(
        self,
        reports: list[str],
        report_ids: Mapping[str, torch.Tensor | None],
        report_attention: Mapping[str, torch.Tensor | None],
        masks: Mapping[str, torch.Tensor | None],
        batch_size: int,
        tower_kwargs: Mapping[str, bool],
    ) -> tuple[dict[str, torch.Tensor], ModelOutput | None, dict[str, torch.Tensor | None]]:
        """Every given report through the one text tower in a single call (patient by patient, report types in
        `CLERC_MODALITIES` order; reports padded on the right to the longest type), then each type's embeddings.

        Returns the embeddings (batch, projection_dim) of each type (zero rows for patients without it), the text
        tower's output (`None` when no report is present) and each type's mask for the loss (`None`: every
        patient)."""
        length = max(report_ids[r].shape[1] for r in reports)
        pad_id = getattr(self.config.text_config, "pad_token_id", None) or 0
        ids, attention, present = [], [], []
        for report in reports:
            report_input = report_ids[report]
            mask = report_attention[report]
            if mask is None:
                mask = torch.ones_like(report_input)
            if mask.shape != report_input.shape:
                raise ValueError(f"{report}_attention_mask must have the shape of {report}_input_ids, "
                                 f"{tuple(report_input.shape)}; got {tuple(mask.shape)}")
            padding = length - report_input.shape[1]
            ids.append(F.pad(report_input, (0, padding), value=pad_id))
            attention.append(F.pad(mask.to(report_input.dtype), (0, padding), value=0))
            present.append(_present_rows(masks[report], batch_size, f"{report}_mask"))
        flat_ids = torch.stack(ids, dim=1).reshape(batch_size * len(reports), length)
        flat_attention = torch.stack(attention, dim=1).reshape(batch_size * len(reports), length)
        report_masks: dict[str, torch.Tensor | None] = {}
        if all(index is None for index in present):
            rows = None
            for report in reports:
                report_masks[report] = None
        else:
            full = torch.ones(batch_size, dtype=torch.bool, device=flat_ids.device)
            row_mask = torch.stack([full if index is None else masks[report].to(torch.bool)
                                    for report, index in zip(reports, present)], dim=1)  # (batch, types)
            rows = row_mask.reshape(-1).nonzero().squeeze(1)
            for report, index in zip(reports, present):
                report_masks[report] = None if index is None else masks[report].to(torch.bool)
            if rows.numel() == 0:
                zeros = self.text_projection[0].weight.new_zeros(batch_size, self.config.projection_dim)
                return {r: zeros for r in reports}, None, report_masks
            flat_ids, flat_attention = flat_ids[rows], flat_attention[rows]
        pooled, outputs = self.encode_partner("text", {"input_ids": flat_ids, "attention_mask": flat_attention},
                                              **tower_kwargs)
        projected = F.normalize(self.text_projection(pooled), dim=-1)
        grid = _scatter_rows(projected, rows, batch_size * len(reports)).reshape(batch_size, len(reports), -1)
        return {report: grid[:, k] for k, report in enumerate(reports)}, outputs, report_masks

    # ------------------------------------------------------------------------------------------------ building
    @staticmethod
    def load_video_tower(
        source: str | os.PathLike | R2Plus1DConfig | R2Plus1DVideoModel, **kwargs: Any
    ) -> tuple[R2Plus1DVideoModel, str | None]:
        """An R(2+1)D tower and where its weights come from: a saved `R2Plus1DVideoModel` (folder or Hub id, e.g.
        converted from torchvision with `cardiomm convert r2plus1d`), an `R2Plus1DVideoModel`, or an
        `R2Plus1DConfig` (random weights, no source)."""
        if isinstance(source, R2Plus1DVideoModel):
            return source, source.config.name_or_path or None
        if isinstance(source, R2Plus1DConfig):
            return R2Plus1DVideoModel(source), None
        if isinstance(source, (PreTrainedModel, PreTrainedConfig)):
            raise ValueError(
                f"a video tower is an R2Plus1DVideoModel or an R2Plus1DConfig, got {type(source).__name__}"
            )
        model_type = _saved_model_type(source, kwargs)
        if model_type != R2Plus1DConfig.model_type:
            raise ValueError(
                f"{source}: holds a {model_type!r} model, not an R2Plus1DVideoModel ({R2Plus1DConfig.model_type!r}); "
                "convert torchvision weights with `cardiomm convert r2plus1d`"
            )
        return R2Plus1DVideoModel.from_pretrained(source, **kwargs), str(source)

    @staticmethod
    def load_clip_tower(
        source: str | os.PathLike | PreTrainedConfig | PreTrainedModel, part: str, **kwargs: Any
    ) -> tuple[PreTrainedModel, torch.Tensor | None, str | None]:
        """A CLIP tower (`part="vision"`: a `CLIPVisionModel`; `part="text"`: a `CLIPTextModel`, or any text encoder),
        CLIP's projection weight of that tower when the source has one, and where the weights come from.

        `source`: a `CLIPModel` (or a folder of one: its vision or text part and projection are taken), a
        `CLIPVisionModel(WithProjection)` / `CLIPTextModel(WithProjection)` or a folder of one, any other text
        encoder (or its folder) for `part="text"`, or a configuration (random weights; a `CLIPConfig` gives its
        vision or text part).
        """
        if part not in ("vision", "text"):
            raise ValueError(f"part must be 'vision' or 'text', got {part!r}")
        tower_attr, projection_attr = ("vision_model", "visual_projection") if part == "vision" else (
            "text_model", "text_projection")
        name = None
        if isinstance(source, PreTrainedConfig):
            config = getattr(source, f"{part}_config", None) if source.model_type == "clip" else source
            if part == "vision":
                if not isinstance(config, CLIPVisionConfig):
                    raise ValueError(f"a chest X-ray tower is a CLIP vision model; got a {type(source).__name__}")
                return CLIPVisionModel(config), None, None
            return AutoModel.from_config(config), None, None
        if not isinstance(source, PreTrainedModel):
            name = str(source)
            saved = _saved_config(source, kwargs)
            architectures = saved.get("architectures") or []
            if saved.get("model_type") == "clip":
                source = CLIPModel.from_pretrained(source, **kwargs)
            elif part == "vision" and "CLIPVisionModelWithProjection" in architectures:
                source = CLIPVisionModelWithProjection.from_pretrained(source, **kwargs)
            elif part == "text" and "CLIPTextModelWithProjection" in architectures:
                source = CLIPTextModelWithProjection.from_pretrained(source, **kwargs)
            elif part == "vision":
                if saved.get("model_type") != "clip_vision_model":
                    raise ValueError(f"{source}: holds a {saved.get('model_type')!r} model, not a CLIP model or CLIP "
                                     "vision model")
                source = CLIPVisionModel.from_pretrained(source, **kwargs)
            else:
                source = AutoModel.from_pretrained(source, **kwargs)
        else:
            name = source.config.name_or_path or None
        if isinstance(source, (CLIPModel, CLIPVisionModelWithProjection, CLIPTextModelWithProjection)):
            tower = getattr(source, tower_attr, None)
            projection = getattr(source, projection_attr, None)
            if tower is None or projection is None:
                raise ValueError(f"a {type(source).__name__} has no {part} tower")
            return tower, projection.weight.detach(), name
        if part == "vision" and not isinstance(source, CLIPVisionModel):
            raise ValueError(f"a chest X-ray tower is a CLIP vision model; got a {type(source).__name__}")
        if part == "text" and isinstance(source, CLIPVisionModel):
            raise ValueError("a text tower cannot be a CLIPVisionModel")
        return source, None, name

    @classmethod
    def from_modality_pretrained(
        cls,
        ecg: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel | None = None,
        echo: str | os.PathLike | R2Plus1DConfig | R2Plus1DVideoModel | None = None,
        angiogram: str | os.PathLike | R2Plus1DConfig | R2Plus1DVideoModel | None = None,
        chest_xray: str | os.PathLike | PreTrainedConfig | PreTrainedModel | None = None,
        text: str | os.PathLike | PreTrainedConfig | PreTrainedModel | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> CLERCMultiEncoder:
        """Build CLERC from pretrained towers; the others (sources left `None`) are built from `config_kwargs` or the
        configuration's defaults with random weights. `logit_scale` starts at `logit_scale_init_value`.

        Args:
            ecg: a saved ECG encoder (folder or Hub id), an `ECGEncoderModel`, an `ECGEncoderConfig` or a backbone
                preset name (`"resnet1d_18"`, random weights).
            echo / angiogram: a saved `R2Plus1DVideoModel` (e.g. Kinetics-400 weights converted with `cardiomm
                convert r2plus1d`), an `R2Plus1DVideoModel` or an `R2Plus1DConfig`; the two towers keep separate
                weights (the same source twice gives two copies).
            chest_xray: a saved `CLIPModel` (its vision part) or `CLIPVisionModel`, such a model, or a config.
            text: a saved `CLIPModel` (its text part) or `CLIPTextModel` (or any text encoder), such a model, or a
                config.
            model_kwargs: extra arguments of every `from_pretrained` (`local_files_only`, `revision`, `dtype`, ...).
            config_kwargs: fields of [`CLERCMultiEncoderConfig`] (`projection_dim`, `text_pooling`, ...).

        A CLIP source that has CLIP's projection (a `CLIPModel`, or a `...WithProjection` model) also gives the
        initial `chest_xray_projection` / `text_projection` when its shape fits (linear projections to the same
        `projection_dim`, 512 for CLIP ViT-B/32), so the two towers start in CLIP's joint space.
        """
        kwargs = dict(model_kwargs or {})
        towers: dict[str, PreTrainedModel] = {}
        projections: dict[str, torch.Tensor] = {}
        if ecg is not None:
            towers["ecg"] = cls.load_ecg_tower(ecg, **kwargs)
        for modality, source in (("echo", echo), ("angiogram", angiogram)):
            if source is not None:
                tower, name = cls.load_video_tower(source, **kwargs)
                if modality == "angiogram" and tower is towers.get("echo"):
                    tower = R2Plus1DVideoModel(tower.config)
                    tower.load_state_dict(towers["echo"].state_dict())
                towers[modality] = tower
                config_kwargs.setdefault(f"{modality}_model_name_or_path", name)
        for modality, source, part in (("chest_xray", chest_xray, "vision"), ("text", text, "text")):
            if source is not None:
                tower, projection, name = cls.load_clip_tower(source, part, **kwargs)
                towers[modality] = tower
                if projection is not None:
                    projections[modality] = projection
                config_kwargs.setdefault(f"{modality}_model_name_or_path", name)
        for modality, tower in towers.items():
            config_kwargs[f"{modality}_config"] = tower.config
        # built from copies: building a composite config resets its sub-configs' attention implementation
        config = cls.config_class.from_tower_configs(**config_kwargs)
        model = cls(config, **{f"{modality}_model": tower for modality, tower in towers.items()})
        with torch.no_grad():
            for modality, weight in projections.items():
                layer = getattr(model, f"{modality}_projection")[0]
                if config.projection_type == "linear" and layer.weight.shape == weight.shape:
                    layer.weight.copy_(weight)
                else:
                    logger.warning(
                        f"{modality}_projection starts fresh: CLIP's projection of the {modality} source, of shape "
                        f"{tuple(weight.shape)}, does not fit {config.projection_type!r} projections to "
                        f"{config.projection_dim} dimensions"
                    )
        return model


def _saved_config(source: str | os.PathLike, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The `config.json` of a saved model (a local folder or a Hub id), as a dict."""
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{source}: no config.json, not a saved model folder")
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    config_dict, _ = PreTrainedConfig.get_config_dict(
        source, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "local_files_only", "cache_dir")}
    )
    return config_dict


def _saved_model_type(source: str | os.PathLike, kwargs: Mapping[str, Any]) -> str | None:
    return _saved_config(source, kwargs).get("model_type")


CLERCMultiEncoder.register_for_auto_class("AutoModel")

__all__ = ["CLERCOutput", "CLERCMultiEncoder"]
