"""``cardiomm bench ssl`` as the user runs it, in its quick mode (tiny encoder, 3 timed steps, one round, a small
neighbour index), in a subprocess: every requested strategy and the supervised baseline get a row whose figures are
consistent with each other, and the neighbour-index table is there. Nothing is asserted about speed itself."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from cli_process import describe, run_cardiomm

from cardiomm.training.positive_pairs import STRATEGIES

PERCENT_COLUMNS = ("sampler_pct", "views_pct", "view_maker_pct", "data_pct", "sampler_views_pct")


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_ssl_quick_mode_times_every_strategy_next_to_supervised(tmp_path: Path) -> None:
    out = tmp_path / "ssl_bench.json"
    run = run_cardiomm("bench", "ssl", "--size", "tiny", "--steps", "3", "--warmup", "1", "--repeats", "1",
                       "--index-sizes", "20000", "--data", tmp_path / "synthetic", "--json", out,
                       cwd=tmp_path, timeout=900)
    assert run.returncode == 0, describe(run)
    assert "Traceback" not in run.stderr
    tables = json.loads(out.read_text())
    rows = {row["strategy"]: row for row in tables["steps"]}
    assert list(rows) == ["supervised", *STRATEGIES]

    supervised = rows["supervised"]
    for name, row in rows.items():
        assert row["timed_steps"] == 3, row
        for column in ("ecg_per_s", "views_per_s", "step_s", "records", "views"):
            assert finite_positive(row[column]), (name, column, row[column])
        assert row["views"] == 64, row  # the default batch: 64 views per step for every variant
        # ECG/s are the records read per step over the step time, views/s the views
        assert math.isclose(row["ecg_per_s"], row["records"] / row["step_s"], rel_tol=1e-9)
        assert math.isclose(row["views_per_s"], row["views"] / row["step_s"], rel_tol=1e-9)
        # the ratio to supervised is the ratio of the two rows' ECG/s measured in this run
        assert math.isclose(row["vs_supervised"], row["ecg_per_s"] / supervised["ecg_per_s"], rel_tol=1e-9)
        for column in PERCENT_COLUMNS:
            value = row[column]
            if name == "supervised" and column == "view_maker_pct":
                assert math.isnan(value)  # no view maker
                continue
            assert 0.0 <= value <= 100.0, (name, column, value)
        assert row["sampler_views_pct"] <= row["data_pct"] + 1e-9, row  # both run between two steps
        assert math.isclose(row["sampler_views_pct"], row["sampler_pct"] + row["views_pct"], rel_tol=1e-9)
        assert row["< 10 %"] == ("yes" if row["sampler_views_pct"] < 10 else "no")
        assert finite_positive(row["peak_rss_gb"]) and math.isfinite(row["final_loss"]), row
        assert row["backbone"] == "resnet1d_8" and row["input"] == "12x500@100Hz", row
    assert supervised["vs_supervised"] == 1.0
    # two views of each record for the same-ECG strategies; anchors + partners (a few drawn twice) for the others
    for name in ("cmsc", "cmlc", "cmsmlc", "simclr", "3kg"):
        assert rows[name]["records"] == 32 and rows[name]["views_kind"] == name
    for name in ("pclr", "demographics", "rhythm", "attributes"):
        assert 32 < rows[name]["records"] <= 64 and rows[name]["views_kind"] == "crop"
    assert supervised["records"] == 64

    (index,) = tables["index"]
    assert index["num_ecgs"] == 20000
    for column in ("build_s", "epoch_sampling_s", "memory_mb", "mean_candidates", "step_sampling_ms"):
        assert finite_positive(index[column]), (column, index)
    assert 1 <= index["mean_candidates"] <= 32  # at most max_neighbours candidates per ECG
    assert 0.0 <= index["fraction_without_partner"] < 1.0
    # the printed tables and the per-epoch sentence
    assert "attribute neighbour index" in run.stdout and re.search(r"\|\s+supervised\s+\|", run.stdout)
    assert "built once per run" in run.stdout
