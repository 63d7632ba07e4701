"""Known-answer check of ``cardiomm ood``: two in-distribution vs out-of-distribution pairs, one thread, < 10 min.

1. Synthetic: a synthetic cohort (150 patients, seed 0) is the in-distribution data; the OOD sets are another
   synthetic cohort (50 patients, seed 1) passed through a recording shift (left/right arm electrodes swapped,
   baseline wander of 0.5 mV at 0.1-0.5 Hz, white noise of 0.15 mV; ``cardiomm.evaluation.ood_report.shift_ecgs``)
   and, as a control that should NOT be rejected more than the significance level, the same seed-1 cohort unshifted.
2. Real: the PTB-XL sample (``../shared/data/ptbxl``, converted with ``cardiomm data convert ptbxl``) is the
   in-distribution data; the OOD sets are the CinC 2021 records of Chapman-Shaoxing (JS*) and Georgia (E*), and as
   a control the CinC 2021 records taken from PTB-XL (HR*).

The encoder: unless --checkpoint is given, a tiny MERL model (``merl_tiny.yaml``: 8-conv 1D ResNet with 16-32
channels, offline MiniLM text tower) trained for --steps steps on the converted PTB-XL sample at 100 Hz with
``cardiomm pretrain``. Every step runs the ``cardiomm`` command; the printed tables are the results.md files.

    python scripts/ood_known_answer_check.py --work /tmp/ood_check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CARDIOMM_TEST_DATA", ROOT.parent / "shared" / "data"))
NOISE_MV, WANDER_MV = 0.15, 0.5  # the shift of the synthetic OOD set
ECG_ENCODER = "{backbone: resnet1d_8, stage_channels: [16, 16, 32, 32, 32, 32, 32, 32]}"


def cardiomm(*args: object) -> None:
    """Run ``cardiomm ARGS`` on one thread; stop on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "cardiomm.cli", *map(str, args)]
    print("$ cardiomm " + " ".join(map(str, args)), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def linked_subset(src: Path, prefix: str, out: Path) -> Path:
    """A folder of symbolic links to the records of ``src`` whose names start with ``prefix``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob(f"{prefix}*")):
        link = out / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/ood_known_answer"), help="working folder")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding ptbxl/ and cinc2021/")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this checkpoint instead of training one")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the tiny checkpoint")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for needed in ("ptbxl", "cinc2021"):
        if not (args.data_root / needed).is_dir():
            sys.exit(f"{args.data_root / needed}: not found (set --data-root or CARDIOMM_TEST_DATA)")

    ptbxl = work / "ptbxl"
    if not (ptbxl / "cardiomm_dataset.json").is_file():
        cardiomm("data", "convert", "ptbxl", args.data_root / "ptbxl", ptbxl)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = work / "checkpoint"
        if not (checkpoint / "config.json").is_file():
            cardiomm("pretrain", "--config", "merl_tiny", "--output-dir", checkpoint,
                     "--set", f"data.path={ptbxl}", "--set", "data.synthetic=null",
                     "--set", "data.sampling_rate=100", "--set", "data.crop_length=500",
                     "--set", f"model.ecg={ECG_ENCODER}", "--set", f"training.max_steps={args.steps}",
                     "--set", f"training.save_every_steps={args.steps}",
                     "--set", f"training.eval_every_steps={args.steps}", "--set", "training.log_with=[]")

    synthetic, seed1, shifted = work / "synthetic", work / "synthetic_seed1", work / "synthetic_seed1_shifted"
    if not (synthetic / "cardiomm_dataset.json").is_file():
        cardiomm("data", "synth", "--n-patients", 150, "--seed", 0, "--out", synthetic, "--no-wfdb")
    if not (seed1 / "cardiomm_dataset.json").is_file():
        cardiomm("data", "synth", "--n-patients", 50, "--seed", 1, "--out", seed1, "--no-wfdb")
    if not (shifted / "cardiomm_dataset.json").is_file():
        from cardiomm.evaluation.ood_report import write_shifted_dataset

        write_shifted_dataset(seed1, shifted, seed=0, noise_mv=NOISE_MV, wander_mv=WANDER_MV)
    cardiomm("ood", "--model", checkpoint, "--in-dist", synthetic, "--data", shifted, "--name", "synthetic shifted",
             "--data", seed1, "--name", "synthetic seed 1 (control)", "--out", work / "ood_synthetic")

    cinc = args.data_root / "cinc2021"
    chapman = linked_subset(cinc, "JS", work / "cinc2021_chapman")
    georgia = linked_subset(cinc, "E", work / "cinc2021_georgia")
    ptbxl_in_cinc = linked_subset(cinc, "HR", work / "cinc2021_ptbxl")
    cardiomm("ood", "--model", checkpoint, "--in-dist", ptbxl, "--data", chapman, "--name", "Chapman (JS*)",
             "--data", georgia, "--name", "Georgia (E*)", "--data", ptbxl_in_cinc,
             "--name", "PTB-XL in CinC (HR*, control)", "--out", work / "ood_real")

    for name in ("ood_synthetic", "ood_real"):
        print()
        print((work / name / "results.md").read_text())
    print(f"total {time.perf_counter() - started:.0f} s; outputs under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
