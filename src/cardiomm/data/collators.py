"""Collators: rows of a cardiomm ECG dataset → model-ready batches, through the model's own processor.

The waveform column is stored at the dataset's sampling rate in mV with leads in the standard order; the
processor saved with the model (:class:`~cardiomm.ECGTextProcessor`, :class:`~cardiomm.ECGSEHRProcessor`,
:class:`~cardiomm.SEHRECGTextProcessor`, or the :class:`~cardiomm.ECGFeatureExtractor` of an ECG encoder) does
resampling, normalisation, cropping and tokenisation, so training, evaluation and inference share one
preprocessing path. A collator only does what depends on the dataset: which columns hold each modality, the
dataset's recorded leads (its ``lead_mask`` column, AND-ed into the processor's ``lead_mask``), the labels, and
each row's reference time for its code timeline (the ECG acquisition). Every batch carries the processor's
``time_mask``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


def stack_ecg(rows: Sequence[Mapping[str, Any]], column: str = "ecg") -> np.ndarray:
    """The ECGs of ``rows`` as one float32 (batch, leads, time) array (a dataset stores one length and rate)."""
    return np.stack([np.asarray(r[column], dtype=np.float32) for r in rows])


def with_recorded_leads(
    batch: dict[str, Any],
    rows: Sequence[Mapping[str, Any]],
    lead_names: Sequence[str] | None = None,
    processor: Any = None,
) -> dict[str, Any]:
    """``batch`` with its ``lead_mask`` (leads with signal) AND-ed with the rows' ``lead_mask`` column (leads
    the dataset recorded), per window when the processor cut windows.

    The column is in the dataset's lead order (``lead_names``); the batch is in the processor's. When both are
    known and differ (e.g. a model pretrained with aVF before aVL), the column is matched to the batch by lead name;
    a lead of the processor the dataset does not have counts as not recorded.
    """
    lead_mask = torch.as_tensor(batch["lead_mask"]).bool()
    if "lead_mask" in rows[0]:
        recorded = torch.as_tensor(np.stack([np.asarray(r["lead_mask"], dtype=bool) for r in rows]))
        target = processor_lead_names(processor)
        if lead_names is not None and target is not None and list(lead_names) != list(target):
            from ..processing.ecg_records import canonical_lead_name

            position = {canonical_lead_name(name): i for i, name in enumerate(lead_names)}
            order = [position.get(canonical_lead_name(name)) for name in target]
            recorded = torch.stack([recorded[:, i] if i is not None else torch.zeros(len(rows), dtype=torch.bool)
                                    for i in order], dim=1)
        lead_mask = lead_mask & (recorded[:, None, :] if lead_mask.ndim == 3 else recorded)
    batch["lead_mask"] = lead_mask
    return batch


def processor_lead_names(processor: Any) -> list[str] | None:
    """The lead order of a processor's (or feature extractor's) ``input_values``, if it has one."""
    extractor = getattr(processor, "feature_extractor", processor)
    names = getattr(extractor, "lead_names", None)
    return list(names) if names is not None else None


def row_labels(rows: Sequence[Mapping[str, Any]], column: str) -> torch.Tensor:
    """The multi-hot (or regression) labels of ``rows`` in ``column``, as float32."""
    return torch.as_tensor(np.stack([np.asarray(r[column]) for r in rows])).float()


def row_time(value: Any) -> Any:
    """A row's timestamp as stored by ``datasets`` (0-d numpy arrays unwrapped)."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _batch(preprocess: Any, rows: Sequence[Mapping[str, Any]], sampling_rate: float, lead_names: Any, crop: str,
           label_column: str | None, **modalities: Any) -> dict[str, torch.Tensor]:
    """``preprocess(ecg=..., **modalities)`` on the rows, with the dataset's recorded leads and labels."""
    out = preprocess(ecg=stack_ecg(rows), sampling_rate=sampling_rate, lead_names=lead_names, crop=crop,
                     return_tensors="pt", **modalities)
    batch = with_recorded_leads(dict(out), rows, lead_names, preprocess)
    if label_column is not None:
        batch["labels"] = row_labels(rows, label_column)
    return batch


@dataclass
class ECGCollator:
    """Batches ECG rows through an ECG encoder's :class:`~cardiomm.ECGFeatureExtractor`: ``input_values``,
    ``lead_mask`` (the extractor's AND the dataset's), ``time_mask``, and ``labels`` from ``label_column``."""

    feature_extractor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    crop: str = "random"
    label_column: str | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return _batch(self.feature_extractor, rows, self.sampling_rate, self.lead_names, self.crop,
                      self.label_column)


@dataclass
class ECGTextCollator:
    """Batches (ECG, report) rows through an :class:`~cardiomm.ECGTextProcessor`: the ECG inputs and the report
    (``text_column``) as ``input_ids``, ``attention_mask`` (+ ``token_type_ids``), truncated at the processor's
    ``max_text_length`` and padded to the longest report of the batch (``padding="longest"``) or to
    ``max_text_length`` (``padding="max_length"``)."""

    processor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    crop: str = "random"
    text_column: str = "report"
    padding: str = "longest"
    label_column: str | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        text = [str(r[self.text_column] or "") for r in rows]
        return _batch(self.processor, rows, self.sampling_rate, self.lead_names, self.crop, self.label_column,
                      text=text, padding=self.padding)


@dataclass
class ECGTextFeatureCollator(ECGTextCollator):
    """Batches (ECG, report) rows for a dual encoder whose text tower is frozen whole: the ECG inputs exactly as
    :class:`ECGTextCollator` makes them, and instead of tokenised reports ``text_pooler_output`` (batch, hidden),
    each row's report feature looked up in ``text_features`` (a
    :class:`~cardiomm.training.text_feature_cache.TextFeatureCache`, or any object whose ``lookup(reports)``
    returns them)."""

    text_features: Any = None

    def __post_init__(self) -> None:
        if self.text_features is None:
            raise ValueError("ECGTextFeatureCollator needs text_features (e.g. a TextFeatureCache)")

    @classmethod
    def from_text_collator(cls, collator: ECGTextCollator, text_features: Any) -> ECGTextFeatureCollator:
        """The collator that batches ECGs as ``collator`` does, with the report features of ``text_features``."""
        return cls(**{f.name: getattr(collator, f.name) for f in fields(ECGTextCollator)}, text_features=text_features)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        text = [str(r[self.text_column] or "") for r in rows]
        batch = _batch(self.processor, rows, self.sampling_rate, self.lead_names, self.crop, self.label_column)
        batch["text_pooler_output"] = self.text_features.lookup(text)
        return batch


@dataclass
class ECGSEHRCollator:
    """Batches ECG–sEHR pairs through an :class:`~cardiomm.ECGSEHRProcessor`: the ECG inputs and the code
    timeline (``events_column``) seen from the ECG acquisition (``time_column``) as ``ehr_input_ids``,
    ``ehr_attention_mask``, ``ehr_time_ids``, ``ehr_type_ids``, padded to the longest of the batch."""

    processor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    crop: str = "random"
    events_column: str = "sehr_events"
    time_column: str = "acquisition_time"
    label_column: str | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return _batch(self.processor, rows, self.sampling_rate, self.lead_names, self.crop, self.label_column,
                      **self.code_timelines(rows))

    def code_timelines(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """The processor's `timelines` and `reference_times` of `rows`."""
        return {"timelines": [list(r[self.events_column]) for r in rows],
                "reference_times": [row_time(r[self.time_column]) for r in rows]}


@dataclass
class SEHRECGTextCollator(ECGSEHRCollator):
    """Batches (sEHR, ECG, text) triplets for :class:`~cardiomm.SEHRECGTextModel` through an
    :class:`~cardiomm.SEHRECGTextProcessor`: the ECG inputs, the code timeline as for :class:`ECGSEHRCollator`
    (``ehr_*``) and the text (``text_column``) as ``input_ids``, ``attention_mask`` (+ ``token_type_ids``),
    truncated at the processor's ``max_text_length``."""

    text_column: str = "text"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        text = [str(r[self.text_column] or "") for r in rows]
        return _batch(self.processor, rows, self.sampling_rate, self.lead_names, self.crop, self.label_column,
                      **self.code_timelines(rows), text=text)


__all__ = [
    "ECGCollator",
    "ECGSEHRCollator",
    "ECGTextCollator",
    "ECGTextFeatureCollator",
    "SEHRECGTextCollator",
    "SelfSupervisedCollator",
    "row_labels",
    "row_time",
    "stack_ecg",
    "with_recorded_leads",
]


@dataclass
class CLERCCollator:
    """Batches patients (items of :class:`~cardiomm.data.multimodal_patients.MultimodalPatients`) through a
    :class:`~cardiomm.CLERCProcessor`: for each modality, the inputs of the patients who have it are processed
    together and placed at their rows of ``(patients, ...)`` tensors (zeros elsewhere), with ``<modality>_mask``
    saying which rows hold one. A modality no patient of the batch has gets an all-False mask and no inputs, so
    every batch names the same modalities (what the loss gathers across processes). ECGs get the dataset's
    recorded leads (the items' ``lead_mask``) AND-ed into ``ecg_lead_mask``.

    Args:
        processor: the model's ``CLERCProcessor``.
        sampling_rate: of the dataset's ECGs.
        lead_names: the dataset's lead order.
        training: random ECG windows, video clips and image crops (training) or the deterministic ones.
        modalities: the modalities to batch (CLERC's eight by default).
    """

    processor: Any
    sampling_rate: float
    lead_names: Sequence[str] | None = None
    training: bool = True
    modalities: Sequence[str] = ("ecg", "echo", "angiogram", "chest_xray", "ecg_report", "echo_report",
                                 "angiogram_report", "chest_xray_report")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        size = len(rows)
        for modality in self.modalities:
            present = [i for i, row in enumerate(rows) if row.get(modality) is not None]
            mask = torch.zeros(size, dtype=torch.bool)
            mask[present] = True
            batch[f"{modality}_mask"] = mask
            if not present:
                continue
            inputs = [rows[i][modality] for i in present]
            if modality == "ecg":
                out = self.processor(ecg=np.stack(inputs), sampling_rate=self.sampling_rate,
                                     lead_names=self.lead_names, training=self.training)
                recorded = [rows[i].get("lead_mask") for i in present]
                if all(r is not None for r in recorded):
                    out = dict(out)
                    out["lead_mask"] = out.pop("ecg_lead_mask")
                    out = with_recorded_leads(out, [{"lead_mask": r} for r in recorded], self.lead_names,
                                              self.processor)
                    out["ecg_lead_mask"] = out.pop("lead_mask")
            else:
                out = self.processor(**{modality: inputs}, training=self.training)
            index = torch.as_tensor(present)
            for key, value in dict(out).items():
                value = torch.as_tensor(value)
                full = value.new_zeros((size, *value.shape[1:]))
                full[index] = value
                batch[key] = full
        return batch


@dataclass
class SelfSupervisedCollator:
    """Batches ECG rows into the views of a self-supervised strategy: each whole record goes through the ECG
    encoder's :class:`~cardiomm.ECGFeatureExtractor` (resampling, leads by name, presence; ``crop="none"``), the
    view maker (a :class:`~cardiomm.training.ecg_views.ECGViewMaker`) cuts and augments ``num_views`` views of it,
    and each view is normalised with its record's statistics, exactly as the extractor normalises the whole record
    (so a view without augmentation is a window of what the extractor returns). The views are made in millivolts,
    where the VCG transforms (``3kg``, the ``simclr`` rotation) mix leads as the heart's dipole does.

    Output: ``input_values`` (N * num_views, leads, view_length), ``lead_mask`` (the extractor's AND the rows'
    ``lead_mask`` column, then the view's own: one lead for ``cmlc``), ``time_mask`` (ones), and from the rows'
    ``positive_id`` (int) ``positive_ids`` (int64) and/or from ``positive_attributes`` (floats, NaN allowed)
    ``positive_attributes`` (float32), each row's value repeated for its views.

    Args:
        feature_extractor: the encoder's ``ECGFeatureExtractor``.
        views: the view maker, built for the extractor's ``lead_names`` and ``sampling_rate``.
        lead_names: the dataset's lead order.
        sampling_rate: of the dataset's ECGs.
    """

    feature_extractor: Any
    views: Any
    lead_names: Sequence[str] | None
    sampling_rate: float

    POSITIVE_COLUMNS = ("positive_id", "positive_attributes")

    def __post_init__(self) -> None:
        extractor_leads = processor_lead_names(self.feature_extractor)
        if extractor_leads is not None and list(self.views.lead_names) != extractor_leads:
            raise ValueError(f"the view maker's lead_names {list(self.views.lead_names)} differ from the feature "
                             f"extractor's {extractor_leads}; build it with the extractor's lead order")
        rate = getattr(self.feature_extractor, "sampling_rate", None)
        if rate is not None and float(rate) != float(self.views.sampling_rate):
            raise ValueError(f"the view maker's sampling_rate {self.views.sampling_rate:g} Hz differs from the "
                             f"feature extractor's {float(rate):g} Hz")
        self._millivolts = copy.copy(self.feature_extractor)
        self._millivolts.normalization = "none"

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from ..processing.feature_extraction_ecg import normalization_statistics

        positives = self._positive_columns(rows)
        out = self._millivolts(ecg=stack_ecg(rows), sampling_rate=self.sampling_rate, lead_names=self.lead_names,
                               crop="none", return_tensors="pt")
        present = out["lead_mask"].numpy()
        signal = out["input_values"]
        recorded = with_recorded_leads(dict(out), rows, self.lead_names, self.feature_extractor)["lead_mask"]
        views, view_mask = self.views(signal, recorded)
        repeat = self.views.num_views
        normalization = self.feature_extractor.normalization
        if normalization != "none":
            offset, scale = normalization_statistics([signal.numpy()], normalization, self.feature_extractor.epsilon,
                                                     present)
            offset = torch.as_tensor(offset).repeat_interleave(repeat, dim=0)[:, :, None]
            scale = torch.as_tensor(scale).repeat_interleave(repeat, dim=0)[:, :, None]
            views = ((views.double() - offset) / scale).float()
            views = torch.where(view_mask[:, :, None], views, 0.0)
        batch = {"input_values": views, "lead_mask": view_mask,
                 "time_mask": torch.ones(views.shape[0], views.shape[-1], dtype=torch.int64)}
        if "positive_id" in positives:
            ids = torch.as_tensor([int(r["positive_id"]) for r in rows], dtype=torch.int64)
            batch["positive_ids"] = ids.repeat_interleave(repeat)
        if "positive_attributes" in positives:
            attributes = np.stack([np.asarray(r["positive_attributes"], dtype=np.float32).reshape(-1) for r in rows])
            batch["positive_attributes"] = torch.as_tensor(attributes).repeat_interleave(repeat, dim=0)
        return batch

    def _positive_columns(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """The positive columns the rows carry; every row must carry each one that any row carries."""
        found = []
        for column in self.POSITIVE_COLUMNS:
            missing = [i for i, row in enumerate(rows) if row.get(column) is None]
            if len(missing) < len(rows):
                if missing:
                    raise ValueError(f"rows {missing[:10]} of the batch lack the {column!r} column that the other "
                                     "rows have")
                found.append(column)
        if not found:
            raise ValueError(f"the rows have neither a {self.POSITIVE_COLUMNS[0]!r} nor a "
                             f"{self.POSITIVE_COLUMNS[1]!r} column; a self-supervised batch needs one of them")
        return found
