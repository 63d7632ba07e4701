#!/usr/bin/env python
"""Real-data check: ECG–report pretraining on PTB-XL and evaluation of the 5 diagnostic superclasses.

Protocol:
- convert the PTB-XL folder (default: the 300-record sample in ``$CARDIOMM_TEST_DATA/ptbxl``) at 500 Hz;
- pretrain an ECG–text experiment (``--config``: any experiment file or shipped name, default ``merl_tiny``;
  ``--set SECTION.KEY=VALUE`` overrides) on folds 1–8 with the English reports built from the SCP statements
  (optionally continuing from a checkpoint pretrained on the synthetic cohort, ``--init-from``);
- evaluate on folds 9–10: zero-shot (knowledge-base prompts of CD, HYP, MI, NORM, STTC) and linear probing
  (logistic regression trained on folds 1–7, regularisation chosen on fold 8, never on 9–10);
- baselines under the same linear-probe protocol: a randomly initialised encoder of the same architecture (a
  strong baseline on small PTB-XL probes: random convolutional features with a linear probe come close to
  pretrained ones on many tasks), and simple signal statistics (per-lead std, amplitude percentiles, band
  powers); the table gives each baseline's margin to the pretrained encoder.

Usage::

    python scripts/ptbxl_real_data_check.py --out outputs/ptbxl_check [--config merl_tiny] [--max-steps 300]
        [--init-from DIR] [--set model.text=offline-minilm ...]
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
    parser.add_argument("--config", default="merl_tiny", help="experiment file or shipped name (ECG–text model)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a key of the experiment file (repeatable)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--init-from", default=None, help="ECGTextDualEncoder checkpoint to continue from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if not (args.ptbxl / "ptbxl_database.csv").is_file():
        raise SystemExit(f"{args.ptbxl}: no ptbxl_database.csv (set --ptbxl or CARDIOMM_TEST_DATA)")

    data_dir = args.out / "ptbxl_500hz"
    if not (data_dir / METADATA_FILE).is_file():
        convert("ptbxl", args.ptbxl, data_dir, sampling_rate=500, num_proc=2)
    dataset, info = load_ecg_dataset(data_dir)

    experiment = load_config(args.config, overrides=args.set)
    name = Path(args.config).stem
    experiment.data = {**experiment.data, "path": str(data_dir), "train_split": "train", "eval_split": "validation"}
    experiment.data.pop("synthetic", None)
    experiment.training.output_dir = str(args.out / f"{name}_ptbxl")
    experiment.training.max_steps = args.max_steps
    experiment.training.per_device_batch_size = args.batch_size
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

    rate, leads = info.sampling_rate, info.lead_names
    zs_emb = embed_ecgs(model, run.processor, test, rate, lead_names=leads)
    zs = zero_shot_classify(zs_emb, dataset_prompts(info, TASK), text_encoder(model, run.processor),
                            labels=y["test"], label_names=names)
    torch.manual_seed(0)
    pretrained = f"{name} pretrained"
    random_encoder = ECGEncoderModel(model.config.ecg_config)
    encoders = {pretrained: model.ecg_model, "random init (same architecture)": random_encoder}
    features = {}
    for enc_name, enc in encoders.items():
        features[enc_name] = {split: embed_ecgs(enc, run.feature_extractor, ds, rate, lead_names=leads)
                              for split, ds in (("train", probe_train), ("validation", probe_val), ("test", test))}
    features["signal statistics"] = {
        split: signal_statistics(np.asarray(ds["ecg"]), rate)
        for split, ds in (("train", probe_train), ("validation", probe_val), ("test", test))
    }
    rows = [{"features": pretrained, "protocol": "zero-shot", "macro AUROC": zs.metrics.macro_auroc, "std": "",
             "pretrained − this": ""}]
    results = {"config": args.config, "overrides": args.set, "init_from": args.init_from,
               "zero_shot": {"macro_auroc": zs.metrics.macro_auroc, "auroc": dict(zs.metrics.auroc)},
               "linear_probe": {}, "n_test": len(test), "n_probe_train": len(probe_train),
               "pretraining_steps": result.global_step}
    for enc_name, feats in features.items():
        probe = linear_probe((feats["train"], y["train"], names), (feats["validation"], y["validation"], names),
                             (feats["test"], y["test"], names), fractions=(1.0,), seeds=args.seeds)
        results["linear_probe"][enc_name] = probe.summary()[1.0]
    reference = results["linear_probe"][pretrained]["mean"]
    for enc_name, stats in results["linear_probe"].items():
        margin = "" if enc_name == pretrained else f"{reference - stats['mean']:+.3f}"
        rows.append({"features": enc_name, "protocol": "linear probe (100 %)", "macro AUROC": stats["mean"],
                     "std": f"{stats['std']:.3f}", "pretrained − this": margin})
    print(format_table(rows, floatfmt=".3f"))
    print(f"\nPTB-XL {TASK} classes on folds 9-10 ({len(test)} ECGs); probe trained on folds 1-7 "
          f"({len(probe_train)}), C chosen on fold 8 ({len(probe_val)}).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
