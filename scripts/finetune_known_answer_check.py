#!/usr/bin/env python
"""Known-answer check of ``cardiomm finetune`` on the PTB-XL sample: a pretrained encoder against the same network
trained from scratch, and LoRA against full fine-tuning.

Runs the `cardiomm` commands a user would run, then prints one table and the checks:

1. ``cardiomm data convert ptbxl SRC DATA`` (skipped when DATA already holds the dataset);
2. ``cardiomm finetune`` of the pretrained checkpoint's encoder (``--model``, e.g. ``DIR/merl_tiny`` of
   ``cardiomm quickstart --out DIR``) on task ``--task`` (PTB-XL superclasses by default), at each ``--fractions``
   over ``--seeds``: full fine-tuning, ``--from-scratch`` (the same architecture from random weights) and
   ``--lora``.

The checks: full fine-tuning beats training from scratch at every fraction (mean test macro AUROC over seeds);
LoRA's mean is within ``--lora-margin`` of full fine-tuning's while it trains fewer parameters (counted: trainable
vs total). The experiment is the shipped ``finetune.yaml`` shrunk to a CPU budget with ``--set`` overrides
(``--max-steps`` optimiser steps, ``--warmup`` of them training the head alone, an evaluation every 5 steps, no
intermediate checkpoints); the same learning rate (``--learning-rate``) for every arm. Exit status 1 when a check
fails.

Usage::

    cardiomm quickstart --out outputs/quickstart
    python scripts/finetune_known_answer_check.py --model outputs/quickstart/merl_tiny --out outputs/finetune_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cardiomm.tables import format_table


def cardiomm(*args: str) -> None:
    print("$ cardiomm " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    default_src = Path(os.environ.get("CARDIOMM_TEST_DATA", "../shared/data")) / "ptbxl"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained cardiomm checkpoint holding an ECG encoder")
    parser.add_argument("--out", default="outputs/finetune_check")
    parser.add_argument("--ptbxl", default=str(default_src), help="PTB-XL folder (default: $CARDIOMM_TEST_DATA/ptbxl)")
    parser.add_argument("--data", default=None, help="converted dataset folder (default: OUT/ptbxl)")
    parser.add_argument("--task", default="super")
    parser.add_argument("--fractions", nargs="+", default=["0.1", "1"])
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="head warm-up steps (backbone frozen)")
    parser.add_argument("--learning-rate", default="1e-3")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lora-margin", type=float, default=0.05)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="further overrides for every arm, e.g. --set training.monitor_metric=eval_macro_auroc")
    args = parser.parse_args(argv)

    out = Path(args.out)
    data = Path(args.data) if args.data else out / "ptbxl"
    start = time.perf_counter()
    if not (data / "cardiomm_dataset.json").is_file():
        cardiomm("data", "convert", "ptbxl", args.ptbxl, str(data), "--num-proc", "1")
    common = ["--data", str(data), "--task", args.task, "--fraction", *args.fractions, "--seeds", *args.seeds,
              "--max-steps", str(args.max_steps),
              "--set", f"model.head_warmup_steps={args.warmup}",
              "--set", f"training.learning_rate={args.learning_rate}",
              "--set", f"training.per_device_batch_size={args.batch_size}",
              "--set", "training.eval_every_steps=5", "--set", "training.save_every_steps=null",
              *(item for value in args.set for item in ("--set", value))]
    arms = {"pretrained, full": [], "from scratch": ["--from-scratch"], "pretrained, LoRA": ["--lora"]}
    results = {}
    for name, extra in arms.items():
        folder = out / name.replace(", ", "_").replace(" ", "_")
        cardiomm("finetune", "--model", args.model, *common, *extra, "--out", str(folder))
        results[name] = json.loads((folder / "results.json").read_text())
    minutes = (time.perf_counter() - start) / 60

    rows, means = [], {}
    for name, result in results.items():
        for row in result["summary"]:
            means[(name, row["fraction"])] = row["test_macro_auroc_mean"]
            rows.append({
                "fine-tuning": name, "fraction": f"{row['fraction']:g}", "train ECGs": row["num_train"],
                "seeds": len(row["seeds"]),
                "test macro AUROC": f"{row['test_macro_auroc_mean']:.4f} ± {row['test_macro_auroc_std']:.4f}",
                "trainable / total parameters": f"{row['trainable_parameters']:,} / {row['total_parameters']:,}",
            })
    print(f"\nPTB-XL sample, task {args.task!r}; {args.max_steps} steps per run ({args.warmup} head warm-up), "
          f"batch {args.batch_size}, learning rate {args.learning_rate}; {minutes:.1f} min in all\n")
    print(format_table(rows))

    checks = []
    for fraction in sorted({f for _, f in means}):
        full, scratch, lora = (means[(n, fraction)] for n in arms)
        checks.append({"check": f"pretrained beats from scratch at {fraction:g}",
                       "value": f"{full:.4f} vs {scratch:.4f}", "met": "yes" if full > scratch else "NO"})
        checks.append({"check": f"LoRA within {args.lora_margin:g} of full fine-tuning at {fraction:g}",
                       "value": f"{lora:.4f} vs {full:.4f}", "met": "yes" if lora >= full - args.lora_margin else "NO"})
    lora_row = results["pretrained, LoRA"]["summary"][0]
    share = lora_row["trainable_parameters"] / lora_row["total_parameters"]
    checks.append({"check": "LoRA trains a fraction of the parameters", "value": f"{100 * share:.1f} %",
                   "met": "yes" if share < 0.5 else "NO"})
    print()
    print(format_table(checks))
    (out / "known_answer_check.json").write_text(json.dumps({"rows": rows, "checks": checks, "minutes": minutes},
                                                            indent=2) + "\n")
    return 0 if all(c["met"] == "yes" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
