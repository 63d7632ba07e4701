#!/usr/bin/env python
"""Real-data check: tiny MERL pretraining on PTB-XL and evaluation of the 5 diagnostic superclasses.

Protocol:
- convert the PTB-XL folder (default: the 300-record sample in ``$CARDIOMM_TEST_DATA/ptbxl``) at 500 Hz;
- pretrain the tiny MERL config on folds 1–8 with the English reports built from the SCP statements (optionally
  continuing from a checkpoint pretrained on the synthetic cohort, ``--init-from``);
- evaluate on folds 9–10: zero-shot (knowledge-base prompts of CD, HYP, MI, NORM, STTC) and linear probing
  (logistic regression trained on folds 1–7, regularisation chosen on fold 8, never on 9–10);
- baselines under the same linear-probe protocol: a randomly initialised encoder of the same architecture, and
  simple signal statistics (per-lead std, amplitude percentiles, band powers).

Usage::

    python scripts/ptbxl_real_data_check.py --out outputs/ptbxl_check [--max-steps 300] [--init-from DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import concatenate_datasets

from cardiomm.data.conversion import convert
from cardiomm.data.ecg_dataset import METADATA_FILE, label_column, load_ecg_dataset
from cardiomm.evaluation.baselines import signal_statistics
from cardiomm.evaluation.embeddings import embed_ecgs, text_encoder
from cardiomm.evaluation.linear_probe import linear_probe
from cardiomm.evaluation.runner import dataset_prompts
from cardiomm.evaluation.zero_shot import zero_shot_classify
from cardiomm.modeling.modeling_ecg_encoder import ECGEncoderModel
from cardiomm.tables import format_table
from cardiomm.training.config import load_config
from cardiomm.training.pretrain import pretrain

TASK = "super"


def default_ptbxl() -> Path:
    root = Path(os.environ.get("CARDIOMM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "ptbxl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, default=default_ptbxl(), help="PTB-XL folder (official layout)")
    parser.add_argument("--out", type=Path, default=Path("outputs/ptbxl_check"))
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--init-from", default=None, help="ECGTextDualEncoder checkpoint to continue from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if not (args.ptbxl / "ptbxl_database.csv").is_file():
        raise SystemExit(f"{args.ptbxl}: no ptbxl_database.csv (set --ptbxl or CARDIOMM_TEST_DATA)")

    data_dir = args.out / "ptbxl_500hz"
    if not (data_dir / METADATA_FILE).is_file():
        convert("ptbxl", args.ptbxl, data_dir, sampling_rate=500, num_proc=2)
    dataset, info = load_ecg_dataset(data_dir)

    experiment = load_config("merl_tiny")
    experiment.data = {**experiment.data, "path": str(data_dir), "train_split": "train", "eval_split": "validation"}
    experiment.data.pop("synthetic", None)
    experiment.training.output_dir = str(args.out / "merl_tiny_ptbxl")
    experiment.training.max_steps = args.max_steps
    experiment.training.per_device_batch_size = 16
    if args.init_from:
        experiment.model["init_from"] = args.init_from
    result, run = pretrain(experiment)
    model = run.model.eval()

    # linear probe: folds 1-7 train, fold 8 selects C, folds 9-10 test
    train_all = dataset["train"].with_format("numpy")
    folds = np.asarray(train_all["strat_fold"])
    probe_train = train_all.select(np.flatnonzero(folds <= 7))
    probe_val = train_all.select(np.flatnonzero(folds == 8))
    test = concatenate_datasets([dataset["validation"], dataset["test"]]).with_format("numpy")
    column, names = label_column(TASK), info.tasks[TASK]
    y = {name: np.asarray(split[column]) for name, split in
         (("train", probe_train), ("validation", probe_val), ("test", test))}

    rate = info.sampling_rate
    zs_emb = embed_ecgs(model, run.feature_extractor, test, rate)
    zs = zero_shot_classify(zs_emb, dataset_prompts(info, TASK), text_encoder(model, run.tokenizer),
                            labels=y["test"], label_names=names)
    torch.manual_seed(0)
    encoders = {"MERL-tiny pretrained": model.ecg_model, "random init": ECGEncoderModel(model.config.ecg_config)}
    features = {}
    for name, enc in encoders.items():
        features[name] = {split: embed_ecgs(enc, run.feature_extractor, ds, rate) for split, ds in
                          (("train", probe_train), ("validation", probe_val), ("test", test))}
    features["signal statistics"] = {
        split: signal_statistics(np.asarray(ds["ecg"]), rate)
        for split, ds in (("train", probe_train), ("validation", probe_val), ("test", test))
    }
    rows = [{"features": "MERL-tiny pretrained", "protocol": "zero-shot", "macro AUROC": zs.metrics.macro_auroc}]
    results = {"zero_shot": {"macro_auroc": zs.metrics.macro_auroc,
                             "auroc": dict(zs.metrics.auroc)},
               "linear_probe": {}, "n_test": len(test), "n_probe_train": len(probe_train),
               "pretraining_steps": result.global_step}
    for name, feats in features.items():
        probe = linear_probe((feats["train"], y["train"], names), (feats["validation"], y["validation"], names),
                             (feats["test"], y["test"], names), fractions=(1.0,), seeds=args.seeds)
        stats = probe.summary()[1.0]
        results["linear_probe"][name] = stats
        rows.append({"features": name, "protocol": "linear probe (100 %)", "macro AUROC": stats["mean"]})
    print(format_table(rows, floatfmt=".3f"))
    print(f"\nPTB-XL {TASK} classes on folds 9-10 ({len(test)} ECGs); probe trained on folds 1-7 "
          f"({len(probe_train)}), C chosen on fold 8 ({len(probe_val)}).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
