#!/usr/bin/env python
"""Known-answer check of K-MERL on the synthetic cohort: partial-lead zero-shot against MERL, and unseen classes.

Runs the `cardiomm` commands a user would run, then prints one comparison table:

1. ``cardiomm pretrain --config kmerl_tiny`` (entities mined from the training and validation reports first);
2. ``cardiomm pretrain --config merl_tiny`` on the same data and number of steps (8-conv ResNet, all 12 leads;
   every run gets ``--max-steps``, 900 by default, and a synthetic cohort of ``--n-patients``);
3. ``cardiomm pretrain --config kmerl_tiny`` again with ``--held-out`` entities left out of the vocabulary (their
   reports still train the contrastive loss), so that their classes are unseen at evaluation;
4. ``cardiomm evaluate --leads 1,2,3,12`` (and the limb, I and II sets) of the three checkpoints on the held-out
   patients of the test split.

Usage::

    python scripts/kmerl_partial_lead_check.py --out outputs/kmerl_check [--max-steps 900] [--n-patients 600]
        [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cardiomm.tables import format_table

HELD_OUT = ("atrial fibrillation", "left ventricular hypertrophy", "sinus bradycardia")


def cardiomm(*args: str) -> None:
    print("$ cardiomm " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cardiomm.cli", *args], check=True)


def pretrain(config: str, out: Path, data: Path, max_steps: int, n_patients: int, *extra: str) -> Path:
    if not (out / "model.safetensors").is_file():
        sets = ["--set", f"data.path={data}", "--set", f"training.max_steps={max_steps}",
                "--set", f"data.synthetic.n_patients={n_patients}"]
        cardiomm("pretrain", "--config", config, "--output-dir", str(out), *sets, *extra)
    return out


def evaluate(model: Path, data: Path, out: Path, leads: str) -> dict:
    if not (out / "partial_leads.json").is_file():
        cardiomm("evaluate", "--model", str(model), "--data", str(data), "--leads", leads, "--out", str(out))
    return json.loads((out / "partial_leads.json").read_text())


def _zero_shot(result: dict, lead_set: str, task: str, scorer: str, key: str = "macro_auroc") -> float | None:
    for entry in result["lead_sets"]:
        if entry["name"] == lead_set and task in entry["tasks"]:
            zero_shot = entry["tasks"][task]["zero_shot"].get(scorer) or {}
            return zero_shot.get(key)
    return None


def _probe(result: dict, lead_set: str, task: str) -> str:
    for entry in result["lead_sets"]:
        if entry["name"] == lead_set and task in entry["tasks"]:
            probe = entry["tasks"][task].get("linear_probe")
            return f"{probe['mean']:.3f} ± {probe['std']:.3f}" if probe else "–"
    return "–"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/kmerl_check", help="folder for the runs and evaluations")
    parser.add_argument("--data", default="outputs/synthetic", help="dataset folder (the synthetic cohort of the "
                                                                    "shipped files is written there when missing)")
    parser.add_argument("--max-steps", type=int, default=900, help="training steps of every run (default: 900, "
                                                                   "kmerl_tiny's)")
    parser.add_argument("--n-patients", type=int, default=600, help="patients of the synthetic cohort")
    parser.add_argument("--leads", default="1,2,3,12", help="lead counts of the partial-lead evaluation")
    parser.add_argument("--held-out", nargs="+", default=list(HELD_OUT), help="entities left out of the vocabulary")
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)

    kmerl = pretrain("kmerl_tiny", out / "kmerl", data, args.max_steps, args.n_patients)
    merl = pretrain("merl_tiny", out / "merl", data, args.max_steps, args.n_patients)
    held_out = pretrain("kmerl_tiny", out / "kmerl_held_out", data, args.max_steps, args.n_patients,
                        "--set", f"data.entities={kmerl / 'entities.json'}",
                        "--set", f"data.held_out_entities={json.dumps(args.held_out)}")
    results = {name: evaluate(model, data, out / f"eval_{name}", args.leads)
               for name, model in (("kmerl", kmerl), ("merl", merl), ("kmerl_held_out", held_out))}

    lead_sets = [entry["name"] for entry in results["kmerl"]["lead_sets"]]
    tasks = list(results["kmerl"]["lead_sets"][0]["tasks"])
    rows = []
    for task in tasks:
        for lead_set in lead_sets:
            kmerl_query = _zero_shot(results["kmerl"], lead_set, task, "query network")
            merl_cosine = _zero_shot(results["merl"], lead_set, task, "cosine")
            margin = None if kmerl_query is None or merl_cosine is None else kmerl_query - merl_cosine
            rows.append({
                "task": task, "lead set": lead_set,
                "K-MERL query network": _fmt(kmerl_query),
                "K-MERL cosine": _fmt(_zero_shot(results["kmerl"], lead_set, task, "cosine")),
                "MERL cosine": _fmt(merl_cosine),
                "K-MERL − MERL": _fmt(margin),
                "K-MERL 1% probe": _probe(results["kmerl"], lead_set, task),
                "MERL 1% probe": _probe(results["merl"], lead_set, task),
            })
    print("\nZero-shot macro AUROC (test split) and 1 % linear probe, by lead set\n")
    print(format_table(rows))

    split = results["kmerl_held_out"]["seen_unseen"]
    unseen_rows = []
    for task in tasks:
        for lead_set in lead_sets:
            unseen_rows.append({
                "task": task, "lead set": lead_set,
                "seen AUROC": _fmt(_zero_shot(results["kmerl_held_out"], lead_set, task, "query network",
                                              "seen_macro_auroc")),
                "unseen AUROC": _fmt(_zero_shot(results["kmerl_held_out"], lead_set, task, "query network",
                                                "unseen_macro_auroc")),
                "unseen classes": ", ".join(split.get(task, {}).get("unseen", [])) or "–",
            })
    print(f"\nK-MERL with {', '.join(args.held_out)} held out of the entity vocabulary: query-network zero-shot "
          "macro AUROC over the seen and the unseen classes (chance 0.5)\n")
    print(format_table(unseen_rows))


if __name__ == "__main__":
    main()
