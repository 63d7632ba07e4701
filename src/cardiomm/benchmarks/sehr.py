"""Speed of the structured-EHR pipeline: ``MedicalCodeTokenizer`` and sEHR-BERT masked-language-model training.

Two tables:

* tokenizer -- a synthetic cohort's patient timelines (all events, ``window="random"``, ``max_length`` 512)
  encoded in batches of ``tokenizer_batch_size`` patients to padded tensors; ``timelines_per_s`` and
  ``codes_per_s`` count input timelines / events per second of the best repeat (the code-normalisation cache is
  warm after the first, untimed, pass; ``cold_timelines_per_s`` is that first pass with a fresh tokenizer).
* MLM training -- one optimiser step of :class:`SEHRBertForMaskedLM` (paper size unless overridden: 5 layers,
  hidden 320, 5 heads, vocabulary 28,600, ``sparse_prediction``) on (batch_size, sequence_length) random codes with
  15 % of them labelled: forward, backward, AdamW. ``tokens_per_s`` counts all input positions of the batch
  (``[CLS]``/codes, no padding), ``masked_per_s`` the predicted ones; ``forward_tokens_per_s`` times inference
  (``torch.inference_mode``, eval mode).

Timings are the best of ``repeats`` runs after ``warmup`` runs. Run ``python -m cardiomm.benchmarks.sehr --help``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cardiomm.modeling.configuration_sehr_bert import SEHRBertConfig
from cardiomm.modeling.modeling_sehr_bert import SEHRBertForMaskedLM


def _best_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark_tokenizer(
    n_patients: int = 1000,
    seed: int = 0,
    min_patients: int = 50,
    batch_size: int = 256,
    max_length: int = 512,
    repeats: int = 3,
) -> dict[str, Any]:
    """Encoding speed of :class:`MedicalCodeTokenizer` on the timelines of a synthetic cohort (one row)."""
    from cardiomm.data.ehr import build_medical_code_tokenizer, patient_timelines
    from cardiomm.synthetic import generate_cohort

    timelines = list(patient_timelines(generate_cohort(n_patients, seed=seed)).values())
    tokenizer = build_medical_code_tokenizer(timelines, min_patients=min_patients)
    n_codes = sum(len(t) for t in timelines)

    def encode_all(tok=tokenizer) -> None:
        for start in range(0, len(timelines), batch_size):
            tok(timelines[start : start + batch_size], window="random", seed=start, max_length=max_length)

    fresh = type(tokenizer)(vocab=[tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))],
                            icd9_to_icd10=tokenizer.icd9_to_icd10)
    start = time.perf_counter()
    encode_all(fresh)
    cold = time.perf_counter() - start
    best = _best_time(encode_all, repeats, warmup=1)
    return {
        "patients": len(timelines),
        "codes_per_patient": n_codes / len(timelines),
        "vocab_size": len(tokenizer),
        "batch_size": batch_size,
        "timelines_per_s": len(timelines) / best,
        "codes_per_s": n_codes / best,
        "cold_timelines_per_s": len(timelines) / cold,
    }


def benchmark_mlm_training(
    batch_size: int = 32,
    sequence_length: int = 512,
    repeats: int = 3,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    mlm_probability: float = 0.15,
    **config_overrides: Any,
) -> dict[str, Any]:
    """Training (and inference) throughput of sEHR-BERT MLM at paper size unless `config_overrides` say else."""
    device = torch.device(device)
    torch.manual_seed(0)
    config = SEHRBertConfig(**{"sparse_prediction": True, "max_position_embeddings": max(512, sequence_length),
                               **config_overrides})
    model = SEHRBertForMaskedLM(config).to(device)
    num_parameters = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, config.vocab_size, (batch_size, sequence_length), generator=g)
    input_ids[:, 0] = 1
    selected = torch.rand(batch_size, sequence_length, generator=g) < mlm_probability
    selected[:, 0] = False
    labels = torch.where(selected, input_ids, -100)
    batch = {
        "input_ids": input_ids.masked_fill(selected, 3),
        "attention_mask": torch.ones_like(input_ids),
        "time_ids": torch.randint(0, config.num_time_buckets, input_ids.shape, generator=g),
        "type_ids": torch.randint(1, 5, input_ids.shape, generator=g),
        "labels": labels,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
        sync()

    def forward() -> None:
        with torch.inference_mode():
            model(**{k: v for k, v in batch.items() if k != "labels"})
        sync()

    model.train()
    train_time = _best_time(train_step, repeats, warmup)
    model.eval()
    forward_time = _best_time(forward, repeats, warmup)
    tokens = batch_size * sequence_length
    return {
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else "",
        "params_m": num_parameters / 1e6,
        "vocab_size": config.vocab_size,
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        "step_s": train_time,
        "tokens_per_s": tokens / train_time,
        "masked_per_s": int(selected.sum()) / train_time,
        "forward_tokens_per_s": tokens / forward_time,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the tokenizer and MLM-training tables."""
    from cardiomm.tables import format_table

    parser = argparse.ArgumentParser(description="Speed of MedicalCodeTokenizer and sEHR-BERT MLM training.")
    parser.add_argument("--patients", type=int, default=1000, help="synthetic cohort size for the tokenizer")
    parser.add_argument("--tokenizer-batch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-tokenizer", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if not args.skip_tokenizer:
        row = benchmark_tokenizer(n_patients=args.patients, batch_size=args.tokenizer_batch_size, repeats=args.repeats)
        print("\nMedicalCodeTokenizer (synthetic cohort, window='random', max_length 512)")
        print(format_table([row]))
    if not args.skip_training:
        row = benchmark_mlm_training(batch_size=args.batch_size, sequence_length=args.sequence_length,
                                     repeats=args.repeats, warmup=args.warmup, device=args.device)
        print("\nsEHR-BERT MLM training step (forward + backward + AdamW)")
        print(format_table([row]))


if __name__ == "__main__":
    main()
