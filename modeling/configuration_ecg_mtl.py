"""Configuration of ECG-MTL: one shared ECG encoder and one small MLP head per task, trained on binary
classification tasks (binary cross-entropy) and regression tasks (mean squared error on standardised targets)
at once (the ECG-MTL model of the EHR paper, Section 3.5 and Appendix E).

The tasks are named in the configuration: `classification_tasks` (one logit each, in column order of
`classification_logits`), `regression_tasks` (one standardised prediction each, in column order of
`regression_predictions`), what the two values of each binary task mean (`task_id2label`), the unit of each
regression target (`regression_units`), the standardisation of each regression target (`regression_mean`,
`regression_std`, fitted on the training split) and the dataset column each task was read from (`task_columns`).

The task losses are combined with random loss weighting (Lin et al. 2022, "Reasonable effectiveness of random
weighting"): at every training step the weights are a softmax of standard normal draws, or with equal weights
(`loss_weighting="equal"`: the mean of the task losses).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_encoder import ECGEncoderConfig

#: How the task losses are combined: "random" (softmax of standard normal draws at every training step) or
#: "equal" (the mean over the tasks).
LOSS_WEIGHTINGS: tuple[str, ...] = ("random", "equal")


class ECGMultiTaskConfig(PreTrainedConfig):
    r"""
    Configuration of [`ECGEncoderForMultiTask`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            The shared ECG encoder; defaults to `ECGEncoderConfig(backbone="resnet1d_8")` (the EHR paper's 8-conv
            ResNet).
        classification_tasks (`list[str]`, defaults to `[]`): Names of the binary classification tasks, in the
            column order of `classification_logits`.
        regression_tasks (`list[str]`, defaults to `[]`): Names of the regression tasks, in the column order of
            `regression_predictions`.
        task_id2label (`dict[str, dict[int, str]]`, *optional*): For each classification task, the meaning of
            its targets 0 and 1 (default `{0: "no <task>", 1: "<task>"}`).
        regression_units (`dict[str, str]`, *optional*): Unit of each regression target (`""` when unknown).
        regression_mean (`list[float]`, *optional*), regression_std (`list[float]`, *optional*):
            Standardisation of the regression targets, one value per regression task (default 0 and 1): the
            model is trained on `(target - mean) / std` and predicts in those standardised units.
        task_columns (`dict[str, str]`, *optional*): The dataset column each task is read from
            (`"labels_conditions:atrial fibrillation"`, `"sex"`, `"lvef"`); evaluation rebuilds the targets of a
            dataset split with it.
        regression_valid_ranges (`dict[str, list[float]]`, *optional*): For a regression task, the `[low, high]`
            range of valid targets; values outside it are missing (e.g. the 29999 placeholder of MIMIC-IV-ECG's
            machine measurements).
        head_hidden_sizes (`list[int]`, defaults to `[128, 64]`): Hidden sizes of every task's MLP head
            (`Linear -> ReLU -> Dropout` per size, then one linear output); `[]` makes each head linear.
        head_dropout (`float`, defaults to 0.2): Dropout after each hidden layer of the heads.
        loss_weighting (`str`, defaults to `"random"`): `"random"` (random loss weighting, weights drawn in
            training mode only; in eval mode the weights are equal) or `"equal"` (the mean of the task losses).
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal init of the heads' output
            layers.

    Example:

    ```python
    >>> config = ECGMultiTaskConfig(ecg_config=ECGEncoderConfig(backbone="resnet1d_8"),
    ...                             classification_tasks=["atrial fibrillation"], regression_tasks=["lvef"],
    ...                             regression_units={"lvef": "%"}, regression_mean=[55.0], regression_std=[9.0])
    >>> model = ECGEncoderForMultiTask(config)
    ```
    """

    model_type: ClassVar[str] = "ecg_multitask"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig, init_kwargs={"backbone": "resnet1d_8"}),
    }

    ecg_config: ECGEncoderConfig | dict | None = None
    classification_tasks: list[str] | tuple[str, ...] = ()
    regression_tasks: list[str] | tuple[str, ...] = ()
    task_id2label: dict[str, dict] | None = None
    regression_units: dict[str, str] | None = None
    regression_mean: list[float] | tuple[float, ...] | None = None
    regression_std: list[float] | tuple[float, ...] | None = None
    task_columns: dict[str, str] | None = None
    regression_valid_ranges: dict[str, list] | None = None
    head_hidden_sizes: list[int] | tuple[int, ...] = (128, 64)
    head_dropout: int | float = 0.2
    loss_weighting: str = "random"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        self.classification_tasks = [str(t) for t in self.classification_tasks]
        self.regression_tasks = [str(t) for t in self.regression_tasks]
        self.head_hidden_sizes = [int(s) for s in self.head_hidden_sizes]
        given = dict(self.task_id2label or {})
        self.task_id2label = {
            task: {int(k): str(v) for k, v in given.get(task, {0: f"no {task}", 1: task}).items()}
            for task in self.classification_tasks
        }
        units = dict(self.regression_units or {})
        self.regression_units = {task: str(units.get(task, "")) for task in self.regression_tasks}
        n = len(self.regression_tasks)
        self.regression_mean = [float(v) for v in (self.regression_mean if self.regression_mean is not None
                                                   else [0.0] * n)]
        self.regression_std = [float(v) for v in (self.regression_std if self.regression_std is not None
                                                  else [1.0] * n)]
        self.task_columns = {str(k): str(v) for k, v in (self.task_columns or {}).items()}
        self.regression_valid_ranges = {str(k): [float(x) for x in v]
                                        for k, v in (self.regression_valid_ranges or {}).items()}
        super().__post_init__(**kwargs)
        self.validate_multitask_fields()

    def validate_multitask_fields(self) -> None:
        """Check the task lists, the standardisation, the heads and the loss weighting (a model needs at least one
        task; the configuration alone may have none)."""
        names = self.task_names
        duplicates = sorted({t for t in names if names.count(t) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique across classification and regression, got {duplicates} "
                             "more than once.")
        n = len(self.regression_tasks)
        if len(self.regression_mean) != n or len(self.regression_std) != n:
            raise ValueError(f"regression_mean and regression_std need one value per regression task ({n}), got "
                             f"{len(self.regression_mean)} and {len(self.regression_std)}.")
        if not all(s > 0 for s in self.regression_std):
            raise ValueError(f"regression_std must be positive, got {self.regression_std}.")
        for task, labels in self.task_id2label.items():
            if sorted(labels) != [0, 1]:
                raise ValueError(f"task_id2label[{task!r}] must name the targets 0 and 1, got {labels}.")
        for task, bounds in self.regression_valid_ranges.items():
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ValueError(f"regression_valid_ranges[{task!r}] must be [low, high] with low < high, got "
                                 f"{bounds}.")
        if any(s < 1 for s in self.head_hidden_sizes):
            raise ValueError(f"head_hidden_sizes must be positive, got {self.head_hidden_sizes}.")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}.")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}.")

    @property
    def task_names(self) -> list[str]:
        """Every task: the classification tasks, then the regression tasks (the order of `task_losses`)."""
        return [*self.classification_tasks, *self.regression_tasks]


__all__ = ["ECGMultiTaskConfig", "LOSS_WEIGHTINGS"]

ECGMultiTaskConfig.register_for_auto_class()
