"""Known-answer check of ECG-MTL on the synthetic cohort: one multi-task model against single-task models.

The synthetic cohort's conditions shape its ECGs, and its labs and echo values follow the conditions (LVEF falls
with infarction, LBBB and AF; NT-proBNP rises with AF, LVH and low LVEF; troponin T with an acute infarction;
low potassium comes with a prolonged QT), so an ECG model can predict them; HbA1c, LDL, hemoglobin and creatinine
depend on risk factors the ECG does not show (or only through age and sex). The check trains, on the training
patients of one cohort:

* one ECG-MTL model (``ecg_mtl_tiny.yaml``: every condition and sex as binary tasks; age, the echo measurements and
  the labs as regression tasks; random loss weighting), and
* with the same encoder, heads, optimiser and number of steps (``--mtl-steps`` gives the multi-task model more),
  one single-task model per task of a subset: the classification tasks whose training prevalence is at least
  5 %, and the regression targets age, LVEF, NT-proBNP, troponin T and potassium (the targets the ECG drives),

then scores every model on the held-out test patients (median over six 5-s windows) and prints one table: task,
kind, the MTL model's metric (AUROC or R²) and the single-task model's.

What it should show: AUROC of the multi-task model above the single-task models' for most classification tasks
(the shared encoder learns from every label), and R² > 0 for age, LVEF and the ECG-driven labs.

Run (about 12 minutes on one CPU thread)::

    OMP_NUM_THREADS=1 python scripts/ecg_mtl_known_answer_check.py --out /tmp/ecg_mtl_check
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

SINGLE_TASK_REGRESSION = ("age", "lvef", "nt_probnp", "troponin_t", "potassium")


def train(name: str, out: Path, args: argparse.Namespace, classification: list[str], regression: list[str],
          steps: int) -> Path:
    """Train ``ecg_mtl_tiny`` with the given task columns for ``steps`` steps; returns the output folder."""
    from cardiomm.training.config import load_config
    from cardiomm.training.pretrain import pretrain

    overrides = [
        f"data.path={out / 'data'}", f"data.synthetic.n_patients={args.n_patients}",
        f"data.synthetic.seed={args.seed}", "data.eval_split=none",
        f"data.classification_columns={classification}", f"data.regression_columns={regression}",
        f"training.output_dir={out / name}", f"training.max_steps={steps}",
        f"training.per_device_batch_size={args.batch_size}", "training.save_every_steps=null",
        "training.log_with=[]", f"training.log_every_steps={args.steps}", f"training.seed={args.seed}",
    ]
    experiment = load_config("ecg_mtl_tiny", overrides)
    result, _ = pretrain(experiment)
    return Path(result.output_dir)


def score(folder: Path, data: Path, crop: str) -> dict[str, tuple[str, float]]:
    """``{task: (kind, AUROC or R²)}`` of a trained folder on the test split."""
    from transformers import AutoFeatureExtractor, AutoModel

    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.evaluation.multitask_metrics import evaluate_multitask

    dataset, info = load_ecg_dataset(data)
    model = AutoModel.from_pretrained(folder).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder)
    metrics = evaluate_multitask(model, feature_extractor, dataset["test"], info, crop=crop)
    return {t.task: (t.kind, t.auroc if t.kind == "classification" else t.r2) for t in metrics.tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ecg_mtl_check"), help="work folder (replaced)")
    parser.add_argument("--n-patients", type=int, default=400)
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of every single-task model")
    parser.add_argument("--mtl-steps", type=int, default=None,
                        help="optimiser steps of the multi-task model (default: --steps; e.g. 1500 for about the "
                             "compute of ten single-task models)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-prevalence", type=float, default=0.05,
                        help="classification tasks with a single-task model: training prevalence at least this")
    parser.add_argument("--crop", default="windows", choices=["windows", "center"], help="test-time crop")
    parser.add_argument("--keep", action="store_true", help="keep the trained models and the cohort")
    args = parser.parse_args()

    import numpy as np
    import torch

    from cardiomm.data.ecg_dataset import load_ecg_dataset
    from cardiomm.tables import format_table

    torch.set_num_threads(1)
    started = time.time()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    mtl = train("mtl", args.out, args, ["labels_conditions", "sex"],
                ["age", "lvef", "lv_mass_index", "ivs_thickness", "nt_probnp", "troponin_t", "potassium",
                 "creatinine", "hemoglobin", "hba1c", "ldl_cholesterol"], args.mtl_steps or args.steps)
    data = args.out / "data"
    mtl_scores = score(mtl, data, args.crop)

    dataset, info = load_ecg_dataset(data)
    train_labels = np.asarray(dataset["train"]["labels_conditions"], dtype=float)
    prevalence = dict(zip(info.tasks["conditions"], train_labels.mean(axis=0)))
    sexes = np.asarray(dataset["train"]["sex"])
    prevalence["sex"] = float((sexes == "M").mean())
    single: dict[str, float] = {}
    for label, p in prevalence.items():
        if min(p, 1 - p) < args.min_prevalence:
            continue
        column = "sex" if label == "sex" else f"labels_conditions:{label}"
        folder = train(f"single_{len(single)}", args.out, args, [column], [], args.steps)
        single[label] = score(folder, data, args.crop)[label][1]
    for column in SINGLE_TASK_REGRESSION:
        folder = train(f"single_{len(single)}", args.out, args, [], [column], args.steps)
        single[column] = score(folder, data, args.crop)[column][1]

    rows = []
    for task, (kind, value) in mtl_scores.items():
        rows.append({"task": task, "kind": kind, "metric": "AUROC" if kind == "classification" else "R2",
                     "train_prevalence": f"{prevalence[task]:.3f}" if task in prevalence else "",
                     "mtl": value, "single_task": single.get(task, float("nan"))})
    print(format_table(rows))
    compared = [r for r in rows if r["kind"] == "classification" and np.isfinite(r["single_task"])
                and np.isfinite(r["mtl"])]
    better = sum(r["mtl"] > r["single_task"] for r in compared)
    print(f"\nclassification: MTL AUROC above single-task on {better} of {len(compared)} tasks "
          f"(mean {np.mean([r['mtl'] for r in compared]):.3f} vs {np.mean([r['single_task'] for r in compared]):.3f})")
    positive = [r["task"] for r in rows if r["kind"] == "regression" and r["mtl"] > 0]
    print(f"regression: MTL R2 > 0 for {positive}")
    print(f"test ECGs: {len(dataset['test'])} of {sum(len(s) for s in dataset.values())}; "
          f"{args.mtl_steps or args.steps} multi-task and {args.steps} single-task steps x batch "
          f"{args.batch_size}; wall time {time.time() - started:.0f} s")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
