"""Training configuration: the ``training`` section of an experiment YAML, plus loading and saving.

An experiment file has the layout::

    model:      {...}   # opaque to the training loop: read by the command that builds the model
    data:       {...}   # opaque: read by the command that builds the datasets
    evaluation: {...}   # optional, opaque
    training:           # TrainingConfig fields
      output_dir: outputs/merl
      learning_rate: 1.0e-4
      max_steps: 10000

Unknown ``training`` keys are refused here; ``cardiomm pretrain`` also checks every key of ``model`` and ``data``
(nested tower configurations included) against what its objective accepts (:mod:`cardiomm.training.objectives`),
with :func:`check_keys`, before anything is built.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_SECTIONS = ("model", "data", "evaluation", "training")
LR_SCHEDULES = ("cosine", "constant", "plateau", "step")
OPTIMIZERS = ("adamw", "sgd")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TEXT_FEATURE_CACHE = ("auto", "off")


@dataclass
class TrainingConfig:
    """Hyper-parameters of :class:`~cardiomm.training.TrainingLoop` (one optimisation recipe for every objective).

    Steps are optimiser steps (one step = ``gradient_accumulation_steps`` micro-batches on every process).
    ``warmup_steps`` wins over ``warmup_ratio``; ``max_steps`` wins over ``num_epochs``. ``lr_schedule: plateau``
    multiplies the rate by ``plateau_factor`` after ``plateau_patience`` evaluations without improvement of
    ``monitor_metric`` (``eval_loss`` or a name returned by the evaluation callback, ``monitor_mode`` min/max),
    which also drives ``early_stopping_patience``; ``lr_schedule: step`` multiplies it by ``lr_step_factor`` every
    ``lr_step_epochs`` epochs (CLERC: ÷ 10 every 20 epochs). ``optimizer`` is ``adamw`` (``adam_*`` fields) or
    ``sgd`` (``momentum``). ``load_best_model_at_end`` keeps the weights of the best evaluation of
    ``monitor_metric`` (in ``<output_dir>/best_model``) and saves those as the final model.
    ``ddp_find_unused_parameters`` is needed by models that leave parameters unused in some batches (multi-task
    heads, modality encoders absent from a batch).
    ``mixed_precision: auto`` is bf16 on a GPU that supports it, else full precision (or what
    ``accelerate launch`` configured). ``eval_every_steps: null`` evaluates at the end of every epoch.
    Every random draw of a run derives from ``seed`` (the weights do not depend on ``num_workers``); ``resume_from``
    is ``"latest"`` (the newest intact checkpoint of ``output_dir``) or a checkpoint folder.
    ``text_feature_cache`` (ECG–text objective): ``auto`` trains from the text tower's pooled outputs computed once
    per dataset when the whole tower is frozen (``freeze_text_layers: -1``; see
    :mod:`~cardiomm.training.text_feature_cache`), ``off`` runs the tower on tokenised reports at every step. The
    cache lives in ``text_feature_cache_dir`` (default ``<output_dir>/text_feature_cache``).
    """

    output_dir: str = "outputs/run"
    seed: int = 42
    # optimisation
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    momentum: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    # learning-rate schedule: cosine decay, constant, or halve-on-plateau of a validation metric
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    lr_step_epochs: float = 20
    lr_step_factor: float = 0.1
    monitor_metric: str = "eval_loss"
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    load_best_model_at_end: bool = False
    # length and batching
    max_steps: int | None = None
    num_epochs: int = 1
    per_device_batch_size: int = 32
    per_device_eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    drop_last: bool = True
    num_workers: int = 0
    mixed_precision: str = "auto"
    ddp_find_unused_parameters: bool = False
    # bookkeeping
    log_every_steps: int = 10
    eval_every_steps: int | None = None
    save_every_steps: int | None = 500
    keep_last: int | None = 3
    resume_from: str | None = None
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    run_name: str = "cardiomm"
    # ECG–text objective: train from cached text features when the text tower is frozen whole
    text_feature_cache: str | bool = "auto"
    text_feature_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text_feature_cache, bool):  # YAML reads an unquoted off / on as a boolean
            self.text_feature_cache = "auto" if self.text_feature_cache else "off"
        if isinstance(self.log_with, str):
            self.log_with = [] if self.log_with in ("", "none") else [self.log_with]
        self.log_with = [name for name in (self.log_with or []) if name not in ("", "none")]
        checks = [
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (0.0 <= self.momentum < 1.0, "momentum must lie in [0, 1)"),
            (self.lr_step_epochs > 0, "lr_step_epochs must be positive"),
            (0.0 < self.lr_step_factor <= 1.0, "lr_step_factor must lie in (0, 1]"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.monitor_mode in ("min", "max"), "monitor_mode must be 'min' or 'max'"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must lie in [0, 1)"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0.0 < self.plateau_factor < 1.0, "plateau_factor must lie in (0, 1)"),
            (self.plateau_patience >= 1, "plateau_patience must be >= 1"),
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.num_epochs > 0, "num_epochs must be positive"),
            (self.per_device_batch_size > 0, "per_device_batch_size must be positive"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.log_every_steps >= 1, "log_every_steps must be >= 1"),
            (self.keep_last is None or self.keep_last >= 1, "keep_last must be >= 1 (or null to keep all)"),
            (self.save_every_steps is None or self.save_every_steps >= 1, "save_every_steps must be >= 1"),
            (self.eval_every_steps is None or self.eval_every_steps >= 1, "eval_every_steps must be >= 1"),
            (self.text_feature_cache in TEXT_FEATURE_CACHE,
             f"text_feature_cache must be one of {TEXT_FEATURE_CACHE}, got {self.text_feature_cache!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (TrainingConfig)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "training config") -> TrainingConfig:
        """Build from a mapping, coercing YAML strings such as ``1e-4`` and naming any unknown key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: unknown key {key!r} in the 'training' section{hint}")
            kwargs[key] = _coerce(value, hints[key], f"{source}: training.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary of every field (YAML-safe)."""
        return dataclasses.asdict(self)


@dataclass
class ExperimentConfig:
    """A whole experiment file: opaque ``model``/``data``/``evaluation`` sections and the typed ``training``.

    ``source`` is the file it was read from (named by error messages; not part of the configuration).
    """

    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout ``{model, data, evaluation, training}`` (empty opaque sections left out)."""
        out: dict[str, Any] = {}
        for name in ("model", "data", "evaluation"):
            if getattr(self, name):
                out[name] = dict(getattr(self, name))
        out["training"] = self.training.to_dict()
        return out


def resolve_config_path(path: str | Path) -> Path:
    """``path`` if it exists, else the experiment file of that name shipped in ``cardiomm.configs``
    (``merl_tiny`` or ``merl_tiny.yaml``)."""
    path = Path(path)
    if path.is_file():
        return path
    from importlib import resources

    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = Path(str(resources.files("cardiomm.configs").joinpath(name)))
    if len(path.parts) == 1 and packaged.is_file():
        return packaged
    shipped = sorted(p.name for p in Path(str(resources.files("cardiomm.configs"))).glob("*.yaml"))
    raise FileNotFoundError(f"{path}: no such experiment file (cardiomm ships: {', '.join(shipped)})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (``{model, data, evaluation, training}``).

    ``overrides`` are ``SECTION.KEY[.KEY...]=VALUE`` strings (the value is read as YAML) applied on top of the file,
    e.g. ``training.num_workers=2`` or ``model.ecg.backbone=resnet1d_18``.

    Raises:
        ValueError: naming the file and the offending key, for an unknown top-level section, an unknown
            ``training`` key (with the closest valid name), a wrongly typed value, a malformed override, or a
            non-mapping document.
    """
    path = resolve_config_path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping with sections {CONFIG_SECTIONS}")
    document = apply_overrides(document, overrides, source=str(path))
    for key in document:
        if key not in CONFIG_SECTIONS:
            close = difflib.get_close_matches(str(key), CONFIG_SECTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{path}: unknown top-level section {key!r} (expected {CONFIG_SECTIONS}){hint}")
    sections = {}
    for name in ("model", "data", "evaluation", "training"):
        value = document.get(name) or {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: section {name!r} must be a mapping, got {type(value).__name__}")
        sections[name] = dict(value)
    training = TrainingConfig.from_dict(sections.pop("training"), source=str(path))
    return ExperimentConfig(training=training, **sections, source=str(path))


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """A copy of an experiment ``document`` with ``SECTION.KEY[.KEY...]=VALUE`` overrides applied (values as YAML)."""
    document = copy.deepcopy(dict(document))
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        parts = dotted.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"{source}: override {item!r} must look like SECTION.KEY=VALUE (e.g. training.seed=1)")
        if parts[0] not in CONFIG_SECTIONS:
            raise ValueError(unknown_key_message(source, "", parts[0], CONFIG_SECTIONS, what="section"))
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: override {item!r}: the value is not valid YAML ({err})") from None
        node = document
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ValueError(f"{source}: override {item!r}: {where} is not a mapping ({child!r})")
            node = child
        node[parts[-1]] = value
    return document


def unknown_key_message(
    source: str, section: str, key: Any, accepted: Collection[str], what: str = "key", owner: str = ""
) -> str:
    """``"<file>: unknown key 'model.ecg.hiden_size' (not accepted by ECGEncoderConfig); did you mean
    'model.ecg.hidden_size'?"`` (the closest accepted name, or the list of accepted names)."""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(str(key), [str(a) for a in accepted], n=1)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else f" (accepted: {', '.join(sorted(accepted))})"
    origin = f" (not accepted by {owner})" if owner else ""
    return f"{source}: unknown {what} {prefix + str(key)!r}{origin}{hint}"


def check_keys(
    values: Mapping[str, Any], accepted: Collection[str], source: str, section: str, owner: str = ""
) -> None:
    """Refuse any key of ``values`` (the mapping at ``section``, e.g. ``model.ecg``) that is not ``accepted``;
    ``owner`` names what defines the accepted keys (a configuration class) in the message.

    Raises:
        ValueError: one line (:func:`unknown_key_message`) per unknown key.
    """
    unknown = [unknown_key_message(source, section, k, accepted, owner=owner) for k in values if k not in accepted]
    if unknown:
        raise ValueError("\n".join(unknown))


def config_class_parameters(config_class: type) -> set[str]:
    """The keyword arguments a ``transformers`` configuration class accepts: its fields, their aliases
    (``attribute_map``) and the generic ``PreTrainedConfig`` keywords (``num_labels``, ``attn_implementation``...)."""
    names = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    if not names:  # a configuration class with a classic __init__
        import inspect

        names = {
            name for name, p in inspect.signature(config_class.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    names |= set(getattr(config_class, "attribute_map", {}) or {})
    return names | {"num_labels", "attn_implementation", "output_attentions", "name_or_path", "torch_dtype"}


def save_config(config: ExperimentConfig | TrainingConfig, path: str | Path) -> Path:
    """Write ``config`` as an experiment YAML that :func:`load_config` reads back."""
    if isinstance(config, TrainingConfig):
        config = ExperimentConfig(training=config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
    return path


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the field type (``int | None``, ``float``, ``list[str]``, ...)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, item_type, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
