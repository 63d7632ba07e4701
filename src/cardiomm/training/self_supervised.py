"""The ECG-only self-supervised pretraining run (``model.type: ecg_self_supervised``): SimCLR, CLOCS, 3KG, PCLR and the
"good views" positive-pair strategies, all trained with one multi-positive contrastive loss
(:class:`~cardiomm.ECGSelfSupervisedModel`).

A strategy decides what a positive pair is; the loss is the same for all of them:

================  ===================================================  ========================================
strategy          positive of an ECG                                   how the batch is built
================  ===================================================  ========================================
``cmsc``          another temporal segment of the same ECG (CLOCS)     B ECGs, 2 views each, ``positive_ids`` =
``cmlc``          the same segment seen from another lead (CLOCS)      the ECG's row (so each view's positive is
``cmsmlc``        another segment from another lead (CLOCS)            the other view of its ECG)
``simclr``        an augmented view of the same ECG (SimCLR)
``3kg``           a VCG-rotated, scaled, time-masked view (3KG)
``pclr``          another ECG of the same patient (PCLR)               B anchors, each followed by one partner
``demographics``  an ECG of the same age band and sex                  drawn from its candidates
``rhythm``        an ECG with the same rhythm labels (an oracle for     (:class:`~cardiomm.training.positive_pairs.
                  rhythm tasks: it uses the labels)                    PositivePairBatchSampler`); ``positive_ids``
``attributes``    an ECG whose standardised wave attributes lie        = the group, or ``positive_attributes``
                  within ``h`` (``positives.threshold``)               = the attributes (positive when within h)
================  ===================================================  ========================================

Every strategy feeds ``2 × training.per_device_batch_size`` views to the encoder per step (one designated positive
per anchor, every other view of the gathered batch a negative, plus any further positive the batch happens to hold).
Only the training split feeds the training batches, and it must share no patient with the test split.

Experiment file::

    model:
      type: ecg_self_supervised
      init_from: null                     # or a saved ECGSelfSupervisedModel folder
      ecg: {backbone: resnet1d_18}        # ECGEncoderConfig fields, or {pretrained: folder of an ECG encoder}
      projection_dim: 128                 # ... any other ECGSelfSupervisedConfig field
      temperature: 0.07
    data:
      path: outputs/synthetic_ssl
      synthetic: {n_patients: 400, seed: 0, measure: true}
      sampling_rate: 100                  # the encoder's rate
      crop_length: 500                    # samples per view
      normalization: zscore
      strategy: attributes
      views: {}                           # ECGViewMaker options of the strategy's view kind
      positives: {threshold: 1.0}         # pclr: -; demographics: age_band_years; rhythm: task;
                                          # attributes: columns, threshold, max_neighbours

The final folder holds the whole model and, in ``encoder/``, its ECG encoder as a plain ``ECGEncoderModel``
checkpoint with the feature extractor, which probing and fine-tuning load like any other encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .annotated_rows import AnnotatedRows
from .config import ExperimentConfig, check_keys, config_class_parameters
from .experiment_data import ExperimentData

ENCODER_FOLDER = "encoder"
"""Sub-folder of a self-supervised run's output folder holding its ECG encoder (``save_encoder``)."""

SSL_DATA_KEYS = ("path", "synthetic", "train_split", "eval_split", "test_split", "sampling_rate", "crop_length",
                 "normalization", "strategy", "views", "positives")


def _strategy(data: dict[str, Any]) -> str:
    from .positive_pairs import STRATEGIES

    strategy = data.get("strategy")
    if strategy not in STRATEGIES:
        raise ValueError(f"data.strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    return str(strategy)


def view_kind(strategy: str) -> str:
    """The :class:`~cardiomm.training.ecg_views.ECGViewMaker` kind of a strategy: its own for the same-ECG strategies,
    one random crop per ECG for the others."""
    from .positive_pairs import SAME_ECG_STRATEGIES

    return strategy if strategy in SAME_ECG_STRATEGIES else "crop"


def check_ssl_experiment(model: dict[str, Any], data: dict[str, Any], source: str) -> list[str]:
    """Problems (one line each, naming ``source`` and the key) of the ``model`` and ``data`` sections of an
    ``ecg_self_supervised`` experiment; nothing is built or read."""
    from ..modeling.configuration_ecg_ssl import ECGSelfSupervisedConfig
    from ..synthetic.ecg import STANDARD_LEAD_ORDER
    from .ecg_views import ECGViewMaker
    from .experiment_data import check_synthetic_section
    from .objectives import check_ecg_tower
    from .positive_pairs import SAME_ECG_STRATEGIES, STRATEGY_OPTIONS

    problems: list[str] = []

    def attempt(check: Any) -> None:
        try:
            check()
        except (ValueError, TypeError) as err:
            problems.append(str(err) if str(err).startswith(source) else f"{source}: {err}")

    accepted = {"type", "init_from", "ecg"} | (config_class_parameters(ECGSelfSupervisedConfig) - {"ecg_config"})
    attempt(lambda: check_keys(model, accepted, source, "model",
                               owner="ECGSelfSupervisedConfig or the ecg_self_supervised objective"))

    attempt(lambda: check_ecg_tower(model.get("ecg"), source))
    attempt(lambda: check_keys(data, SSL_DATA_KEYS, source, "data", owner="the ecg_self_supervised objective"))
    attempt(lambda: check_synthetic_section(data.get("synthetic"), source, paired=False))
    try:
        strategy = _strategy(data)
    except ValueError as err:
        problems.append(f"{source}: {err}")
        return problems

    def views_section() -> None:
        views = data.get("views") or {}
        if not isinstance(views, dict):
            raise ValueError(f"data.views must be a mapping, got {views!r}")
        try:
            ECGViewMaker(view_kind(strategy), sampling_rate=float(data.get("sampling_rate", 500)),
                         lead_names=list(STANDARD_LEAD_ORDER), view_length=int(data.get("crop_length", 2500)),
                         **views)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{source}: data.views ({view_kind(strategy)} views of strategy {strategy}): {err}") \
                from err

    def positives_section() -> None:
        positives = data.get("positives") or {}
        if not isinstance(positives, dict):
            raise ValueError(f"{source}: data.positives must be a mapping, got {positives!r}")
        if strategy in SAME_ECG_STRATEGIES:
            if positives:
                raise ValueError(f"{source}: data.positives does not apply to strategy {strategy} (its positive is "
                                 f"another view of the same ECG); remove {sorted(positives)}")
            return
        check_keys(positives, STRATEGY_OPTIONS[strategy], source, "data.positives",
                   owner=f"the {strategy} strategy")

    attempt(views_section)
    attempt(positives_section)
    return problems


def records_at_model_rate(split: Any, feature_extractor: Any, info: Any, what: str = "records") -> Any:
    """The ``ecg`` and ``lead_mask`` of ``split`` at the feature extractor's sampling rate and in its lead order,
    in millivolts (the extractor without normalisation, whole records), with the dataset's recorded leads AND-ed
    into ``lead_mask``: one pass over the split, written to the ``datasets`` cache and reused by later runs on the
    same data, instead of resampling every record at every epoch. A split already at the extractor's rate and lead
    order is returned as it is."""
    import copy

    from datasets import Array2D, Features, Sequence, Value

    from ..data.collators import with_recorded_leads

    columns = split.select_columns(["ecg", "lead_mask"])
    same_rate = float(info.sampling_rate) == float(feature_extractor.sampling_rate)
    if (same_rate and list(info.lead_names) == list(feature_extractor.lead_names)) or len(columns) == 0:
        return columns
    millivolts = copy.copy(feature_extractor)
    millivolts.normalization = "none"
    num_leads = len(feature_extractor.lead_names)
    probe = millivolts(ecg=np.asarray(columns.with_format("numpy")[0]["ecg"], np.float32)[None],
                       sampling_rate=info.sampling_rate, lead_names=info.lead_names, crop="none", return_tensors="np")
    length = int(probe["input_values"].shape[-1])

    def convert(batch: dict[str, Any]) -> dict[str, Any]:
        out = millivolts(ecg=np.stack([np.asarray(e, np.float32) for e in batch["ecg"]]),
                         sampling_rate=info.sampling_rate, lead_names=info.lead_names, crop="none",
                         return_tensors="np")
        rows = [{"lead_mask": mask} for mask in batch["lead_mask"]]
        lead_mask = with_recorded_leads(dict(out), rows, info.lead_names, feature_extractor)["lead_mask"]
        return {"ecg": np.asarray(out["input_values"], np.float32), "lead_mask": lead_mask.numpy()}

    features = Features({"ecg": Array2D((num_leads, length), "float32"),
                         "lead_mask": Sequence(Value("bool"), length=num_leads)})
    return columns.map(convert, batched=True, batch_size=256, features=features,
                       desc=f"{what} at {float(feature_extractor.sampling_rate):g} Hz")


def _split(dataset: Any, name: str, what: str) -> Any:
    if name not in dataset:
        raise ValueError(f"the dataset has no {what} split {name!r} (splits: {sorted(dataset)})")
    return dataset[name]


def build_self_supervised_run(experiment: ExperimentConfig, experiment_data: ExperimentData) -> Any:
    """Build an ``ecg_self_supervised`` run (see the module docstring): the model, the feature extractor, the training
    and evaluation rows with their positives, the view-making collator and, for the patient-invariant strategies,
    the positive-pair batch samplers."""
    from ..data.collators import SelfSupervisedCollator
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_ssl import ECGSelfSupervisedModel
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor
    from .ecg_views import ECGViewMaker
    from .objectives import PretrainingRun
    from .positive_pairs import (
        SAME_ECG_STRATEGIES,
        AttributeNeighbours,
        GroupCandidates,
        PositivePairBatchSampler,
        check_disjoint_patients,
        group_ids,
        standardise,
        wave_attributes,
    )

    spec = dict(experiment.model)
    spec.pop("type", None)
    data = dict(experiment.data)
    training = experiment.training
    dataset, info = experiment_data.dataset, experiment_data.info
    strategy = _strategy(data)
    positives = dict(data.get("positives") or {})

    init_from = spec.pop("init_from", None)
    ecg_spec = dict(spec.pop("ecg", None) or {"backbone": "resnet1d_18"})
    threshold = float(positives.get("threshold", 1.0))
    if strategy == "attributes":
        spec["attribute_threshold"] = threshold
    if init_from:
        model = ECGSelfSupervisedModel.from_pretrained(init_from)
        for key, value in spec.items():
            setattr(model.config, key, value)
    else:
        ecg_source = ecg_spec.pop("pretrained", None) or ECGEncoderConfig(**ecg_spec)
        model = ECGSelfSupervisedModel.from_encoder_pretrained(ecg_source, **spec)

    view_length = int(data.get("crop_length", 2500))
    feature_extractor = ECGFeatureExtractor(
        lead_names=model.config.ecg_config.lead_names,
        sampling_rate=data.get("sampling_rate", info.sampling_rate),
        normalization=data.get("normalization", "zscore"),
        crop_length=view_length,
    )
    views = ECGViewMaker(view_kind(strategy), sampling_rate=float(feature_extractor.sampling_rate),
                         lead_names=list(feature_extractor.lead_names), view_length=view_length,
                         **dict(data.get("views") or {}))
    # the records are resampled once (records_at_model_rate): the collator reads them at the extractor's rate
    collator = SelfSupervisedCollator(feature_extractor, views, lead_names=list(feature_extractor.lead_names),
                                      sampling_rate=float(feature_extractor.sampling_rate))

    train_name = data.get("train_split", "train")
    train_split = _split(dataset, train_name, "training")
    test_name = data.get("test_split", "test")
    if test_name in dataset:  # the test patients must never feed pretraining
        check_disjoint_patients(train_split, dataset[test_name])
    eval_name = data.get("eval_split", "validation")
    eval_split = dataset[eval_name] if eval_name in dataset and len(dataset[eval_name]) else None

    def rows(split: Any) -> Any:
        return records_at_model_rate(split, feature_extractor, info).with_format("numpy")

    eval_batch_size = training.per_device_eval_batch_size or training.per_device_batch_size
    train_batches = eval_batches = None
    if strategy in SAME_ECG_STRATEGIES:
        train = AnnotatedRows(rows(train_split), positive_id=np.arange(len(train_split)))
        evaluation = (AnnotatedRows(rows(eval_split), positive_id=np.arange(len(eval_split)))
                      if eval_split is not None else None)
    elif strategy == "attributes":
        columns = positives.get("columns", "auto")
        raw_train, names = wave_attributes(train_split, columns=columns, sampling_rate=info.sampling_rate,
                                           lead_names=info.lead_names)
        train_attributes = standardise(raw_train, raw_train).astype(np.float32)
        print(f"wave attributes ({len(names)}): {', '.join(names)}; h = {threshold}", flush=True)
        max_neighbours = int(positives.get("max_neighbours", 32))
        train = AnnotatedRows(rows(train_split), positive_attributes=train_attributes)
        train_batches = PositivePairBatchSampler(
            AttributeNeighbours(train_attributes, threshold, max_neighbours=max_neighbours),
            2 * training.per_device_batch_size, seed=training.seed, drop_last=True,
        )
        evaluation = None
        if eval_split is not None:
            raw_eval, eval_names = wave_attributes(eval_split, columns=columns, sampling_rate=info.sampling_rate,
                                                   lead_names=info.lead_names)
            if eval_names != names:
                raise ValueError(f"the {eval_name} split's wave attributes {eval_names} differ from the training "
                                 f"split's {names}; give data.positives.columns explicitly")
            eval_attributes = standardise(raw_eval, raw_train).astype(np.float32)
            evaluation = AnnotatedRows(rows(eval_split), positive_attributes=eval_attributes)
            eval_batches = PositivePairBatchSampler(
                AttributeNeighbours(eval_attributes, threshold, max_neighbours=max_neighbours),
                2 * eval_batch_size, seed=training.seed, drop_last=False, shuffle=False,
            )
    else:
        # rows without a group (code -1) have no candidate: the samplers never draw them
        train_groups = GroupCandidates(group_ids(train_split, strategy, positives))
        train = AnnotatedRows(rows(train_split), positive_id=train_groups.codes)
        train_batches = PositivePairBatchSampler(train_groups, 2 * training.per_device_batch_size,
                                                 seed=training.seed, drop_last=True)
        evaluation = None
        if eval_split is not None:
            # group codes are per split: equal keys of the two splits need not have equal codes
            eval_groups = GroupCandidates(group_ids(eval_split, strategy, positives))
            evaluation = AnnotatedRows(rows(eval_split), positive_id=eval_groups.codes)
            eval_batches = PositivePairBatchSampler(eval_groups, 2 * eval_batch_size, seed=training.seed,
                                                    drop_last=False, shuffle=False)
    if train_batches is not None:
        print(f"{strategy} positives: {train_batches.num_anchors} training ECGs have a partner, "
              f"{train_batches.num_without_partner} have none (not drawn as anchors)", flush=True)
        if len(train_batches) == 0:
            raise ValueError(
                f"strategy {strategy}: no full batch of {training.per_device_batch_size} anchors can be drawn from "
                f"the {train_batches.num_anchors} training ECGs that have a partner; lower "
                "training.per_device_batch_size or use more data"
            )
    if evaluation is not None and eval_batches is not None and len(eval_batches) == 0:
        print(f"no validation ECG has a {strategy} partner: the run is not evaluated", flush=True)
        evaluation = eval_batches = None
    return PretrainingRun(model, feature_extractor, None, train, evaluation, collator, info,
                          train_batch_sampler=train_batches, eval_batch_sampler=eval_batches,
                          after_save=export_encoder)


def export_encoder(output_dir: str | Path) -> Path:
    """Write the ECG encoder of the self-supervised model saved in ``output_dir`` to ``output_dir/encoder`` as a
    plain ``ECGEncoderModel`` checkpoint with the feature extractor. Returns that folder."""
    from ..modeling.modeling_ecg_ssl import ECGSelfSupervisedModel
    from ..processing.feature_extraction_ecg import ECGFeatureExtractor

    output_dir = Path(output_dir)
    model = ECGSelfSupervisedModel.from_pretrained(output_dir)
    target = output_dir / ENCODER_FOLDER
    model.save_encoder(target, feature_extractor=ECGFeatureExtractor.from_pretrained(output_dir))
    return target
