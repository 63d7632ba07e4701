"""Evaluation: zero-shot classification, linear probing, retrieval, OOD detection, plots and result tables.

Everything here works on numpy embeddings / scores and on callables (e.g. ``encode_text``), independent of
the model classes.
"""

from .aggregation import aggregate_windows
from .clerc_report import CLERCEvaluationReport, evaluate_clerc_checkpoint, evaluate_clerc_model
from .cross_modal_retrieval import closest_pairs, plot_retrieval_heatmap, retrieval_matrix
from .linear_probe import (
    DEFAULT_CS,
    LinearProbeResult,
    LinearProbeRun,
    align_label_columns,
    linear_probe,
)
from .merl_protocol import (
    MERLClassificationMetrics,
    MERLProbeResult,
    MERLZeroShotResult,
    evaluate_merl_protocol,
    load_merl_prompts,
    merl_classification_metrics,
    merl_linear_probe,
    merl_zero_shot,
)
from .metrics import ClassificationMetrics, classification_metrics, macro_auroc, max_f1
from .multimodal_embeddings import embed_clerc_dataset, embed_clerc_split, embedding_matrix
from .multimodal_probe import (
    CROSS_MODAL_TASKS,
    ProbeResult,
    ProbeTask,
    attach_labels,
    cross_modal_table,
    fit_linear_probe,
)
from .multimodal_zero_shot import PromptTask, ZeroShotTaskResult, evaluate_zero_shot_task, load_prompt_tasks
from .partial_leads import (
    NAMED_LEAD_SETS,
    PAPER_LEAD_ORDER,
    LeadSet,
    LeadSubsetView,
    PartialLeadReport,
    SeenUnseenSplit,
    evaluate_partial_leads,
    lead_sets_from_options,
    parse_lead_counts,
    parse_lead_set,
    progressive_lead_sets,
    restrict_leads,
    seen_unseen_split,
)
from .ood import RelativeMahalanobis, ood_auroc, rejection_rate, relative_mahalanobis
from .plots import plot_roc_curves
from .results import load_results, results_table, save_results, to_jsonable, write_results
from .retrieval import DEFAULT_KS, median_percentile_rank, percentile_ranks, precision_at_k
from .zero_shot import (
    ZeroShotResult,
    class_text_embeddings,
    l2_normalize,
    zero_shot_classify,
    zero_shot_regression,
)

__all__ = [
    "CLERCEvaluationReport",
    "CROSS_MODAL_TASKS",
    "ClassificationMetrics",
    "DEFAULT_CS",
    "DEFAULT_KS",
    "LeadSet",
    "LeadSubsetView",
    "LinearProbeResult",
    "LinearProbeRun",
    "MERLClassificationMetrics",
    "MERLProbeResult",
    "MERLZeroShotResult",
    "NAMED_LEAD_SETS",
    "PAPER_LEAD_ORDER",
    "PartialLeadReport",
    "ProbeResult",
    "ProbeTask",
    "PromptTask",
    "RelativeMahalanobis",
    "SeenUnseenSplit",
    "ZeroShotResult",
    "ZeroShotTaskResult",
    "aggregate_windows",
    "align_label_columns",
    "attach_labels",
    "class_text_embeddings",
    "classification_metrics",
    "closest_pairs",
    "cross_modal_table",
    "embed_clerc_dataset",
    "embed_clerc_split",
    "embedding_matrix",
    "evaluate_clerc_checkpoint",
    "evaluate_clerc_model",
    "evaluate_merl_protocol",
    "evaluate_partial_leads",
    "evaluate_zero_shot_task",
    "fit_linear_probe",
    "l2_normalize",
    "lead_sets_from_options",
    "linear_probe",
    "load_merl_prompts",
    "load_prompt_tasks",
    "load_results",
    "macro_auroc",
    "max_f1",
    "median_percentile_rank",
    "merl_classification_metrics",
    "merl_linear_probe",
    "merl_zero_shot",
    "ood_auroc",
    "parse_lead_counts",
    "parse_lead_set",
    "percentile_ranks",
    "plot_retrieval_heatmap",
    "plot_roc_curves",
    "precision_at_k",
    "progressive_lead_sets",
    "rejection_rate",
    "relative_mahalanobis",
    "restrict_leads",
    "results_table",
    "retrieval_matrix",
    "save_results",
    "seen_unseen_split",
    "to_jsonable",
    "write_results",
    "zero_shot_classify",
    "zero_shot_regression",
]
