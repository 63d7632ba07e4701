"""The ``cardiomm`` command line: data, pretraining, evaluation, Hub upload, benchmarks and the quickstart."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import synthesize

    synthesize(
        n_patients=args.n_patients,
        out_dir=args.out,
        seed=args.seed,
        imaging=args.imaging,
        measure=args.measure,
        write_wfdb_files=not args.no_wfdb,
        num_proc=args.num_proc,
    )
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.conversion import convert

    summary = convert(
        args.name,
        args.src,
        args.out,
        sampling_rate=args.sampling_rate,
        num_proc=args.num_proc,
    )
    return 0 if summary.converted > 0 else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .tables import format_table

    if args.what == "encoders":
        from .benchmarks.encoders import benchmark_encoders
        from .benchmarks.feature_extraction import benchmark_feature_extractor

        print(format_table(benchmark_encoders(batch_size=args.batch_size)))
        print()
        print(format_table(benchmark_feature_extractor()))
    elif args.what == "synthetic":
        from .benchmarks.synthetic import benchmark_synthetic

        print(format_table(benchmark_synthetic()))
    elif args.what == "data-loading":
        from .benchmarks.data_loading import benchmark_data_loading

        print(format_table(benchmark_data_loading()))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .training.pretrain import main as pretrain_main

    pretrain_main(args.config, resume_from=args.resume_from, max_steps=args.max_steps, output_dir=args.output_dir)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from datasets import DatasetDict
    from transformers import AutoModel, AutoProcessor

    from .data.ecg_dataset import load_ecg_dataset
    from .evaluation.runner import evaluate_ecg_text_model

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    dataset, info = load_ecg_dataset(args.data)
    dataset = DatasetDict({k: v.with_format("numpy") for k, v in dataset.items()})
    report = evaluate_ecg_text_model(
        model, processor.feature_extractor, processor.tokenizer, dataset, info, tasks=args.tasks or None,
        out_dir=args.out, crop=args.crop,
    )
    print(report.table())
    print(f"results written to {args.out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub.push import push_checkpoint

    url = push_checkpoint(args.folder, args.repo_id, private=args.private)
    print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(out_dir=args.out, n_patients=args.n_patients, seed=args.seed, max_steps=args.max_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cardiomm`` command."""
    parser = argparse.ArgumentParser(prog="cardiomm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build the synthetic cohort or convert a real dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate the synthetic cardiology cohort as a dataset folder")
    synth.add_argument("--n-patients", type=int, default=500)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--imaging", action="store_true", help="also generate toy echo/angiogram/X-ray data")
    synth.add_argument("--measure", action="store_true", help="delineate every ECG (neurokit2) for measured attributes")
    synth.add_argument("--no-wfdb", action="store_true", help="skip writing the WFDB copy of the waveforms")
    synth.add_argument("--num-proc", type=int, default=1)
    synth.set_defaults(func=_cmd_data_synth)

    conv = data_sub.add_parser("convert", help="convert a real dataset to a cardiomm dataset folder")
    conv.add_argument("name", choices=["ptbxl", "challenge", "mimic-iv-ecg", "incart"],
                      help="dataset layout (Parquet is written incrementally, so memory stays bounded)")
    conv.add_argument("src", help="the dataset's official directory")
    conv.add_argument("out", help="output folder")
    conv.add_argument("--sampling-rate", type=int, default=500)
    conv.add_argument("--num-proc", type=int, default=2)
    conv.set_defaults(func=_cmd_data_convert)

    bench = sub.add_parser("bench", help="speed benchmarks (print a table)")
    bench.add_argument("what", choices=["encoders", "synthetic", "data-loading"])
    bench.add_argument("--batch-size", type=int, default=64)
    bench.set_defaults(func=_cmd_bench)

    pre = sub.add_parser("pretrain", help="train the objective of an experiment file")
    pre.add_argument("--config", required=True, help="experiment YAML, or the name of a shipped one (merl_tiny)")
    pre.add_argument("--resume-from", default=None, help="'latest' or a checkpoint folder")
    pre.add_argument("--max-steps", type=int, default=None)
    pre.add_argument("--output-dir", default=None)
    pre.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser("evaluate", help="zero-shot, linear-probe and retrieval evaluation of an ECG-text model")
    ev.add_argument("--model", required=True, help="checkpoint folder (weights + processor)")
    ev.add_argument("--data", required=True, help="cardiomm dataset folder with train/validation/test splits")
    ev.add_argument("--tasks", nargs="*", default=None, help="label tasks of the dataset (default: all)")
    ev.add_argument("--crop", default="center", choices=["center", "windows"],
                    help="'windows': median over 6 test-time crops of 5 s")
    ev.add_argument("--out", default="outputs/evaluation")
    ev.set_defaults(func=_cmd_evaluate)

    push = sub.add_parser("push", help="upload a checkpoint folder (weights, processor, code, card) to the Hub")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_cmd_push)

    quick = sub.add_parser("quickstart", help="the end-to-end main job on the built-in synthetic cohort")
    quick.add_argument("--out", default="outputs/quickstart")
    quick.add_argument("--n-patients", type=int, default=300)
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--max-steps", type=int, default=None, help="pretraining steps (default: the tiny config's)")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cardiomm`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"cardiomm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
