#!/usr/bin/env python
"""Known-answer check of CLERC on the synthetic cohort with imaging, on held-out (test-split) patients.

Runs the `cardiomm` commands a user would run, then prints the checks against their bars:

1. ``cardiomm data synth --imaging`` (``--n-patients``; skipped when ``--data`` already holds a dataset);
2. ``cardiomm pretrain --config clerc_tiny`` on it (``--set`` overrides may be added with ``--set``);
3. ``cardiomm evaluate`` of the checkpoint (retrieval matrix, zero-shot, probes).

The checks: echo -> ECG and ECG -> echo retrieval median percentile clearly below 50 (chance); zero-shot LVEF
regression from echo with R^2 > 0 and Pearson r > 0.5; zero-shot pacemaker detection AUROC > 0.8 from the ECG,
the echo and the chest X-ray.

Usage::

    python scripts/clerc_known_answer_check.py --out outputs/clerc_check [--n-patients 600] [--data DIR]
        [--set training.num_epochs=30 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cardiomm.tables import format_table


def cardiomm(*args: str) -> None:
    print("$ cardiomm " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], check=True)


def checks(results: dict) -> list[dict[str, object]]:
    """One row per known-answer check: what, the measured value, the bar, and whether it is met."""
    matrix = results["retrieval"]["matrix"]
    zero_shot = results["zero_shot"]
    rows = []

    def add(what: str, value: float | None, bar: str, passed: bool) -> None:
        rows.append({"check": what, "value": "n/a" if value is None else f"{value:.3f}", "bar": bar,
                     "met": "yes" if passed else "NO"})

    for query, retrieved in (("echo", "ecg"), ("ecg", "echo")):
        value = matrix.get(query, {}).get(retrieved)
        add(f"{query} -> {retrieved} retrieval, median percentile", value, "< 50 (chance), clearly",
            value is not None and value < 40)
    lvef = zero_shot.get("echo_lvef", {})
    r2, r = lvef.get("value"), lvef.get("pearson_r")
    add("zero-shot LVEF from echo, R^2", r2, "> 0", r2 is not None and r2 > 0)
    add("zero-shot LVEF from echo, Pearson r", r, "> 0.5", r is not None and r > 0.5)
    for task in ("ecg_pacemaker", "echo_pacemaker", "chest_xray_pacemaker"):
        value = zero_shot.get(task, {}).get("value")
        add(f"zero-shot pacemaker AUROC ({task.split('_pacemaker')[0]})", value, "> 0.8",
            value is not None and value > 0.8)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: OUT/data, written first)")
    parser.add_argument("--n-patients", type=int, default=600)
    parser.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE override of clerc_tiny")
    args = parser.parse_args(argv)
    data = args.data or args.out / "data"
    if not (data / "cardiomm_dataset.json").is_file():
        cardiomm("data", "synth", "--imaging", "--n-patients", str(args.n_patients), "--out", str(data),
                 "--no-wfdb")
    run = args.out / "clerc_tiny"
    if not (run / "model.safetensors").is_file():
        sets = [item for value in args.set for item in ("--set", value)]
        cardiomm("pretrain", "--config", "clerc_tiny", "--set", f"data.path={data}",
                 "--set", f"training.output_dir={run}", "--set", "training.log_with=[]", *sets)
    cardiomm("evaluate", "--model", str(run), "--data", str(data), "--out", str(args.out / "evaluation"))
    results = json.loads((args.out / "evaluation" / "results.json").read_text())
    rows = checks(results)
    print("\nCLERC known-answer checks (held-out test patients)")
    print(format_table(rows))
    return 0 if all(row["met"] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
