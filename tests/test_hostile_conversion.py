"""``cardiomm data convert`` against what goes wrong on real machines and real files.

A conversion killed half-way and run again, a worker process killed (as the out-of-memory killer does), an output
folder holding someone else's Parquet files, and a corpus with corrupt, truncated and mislabelled records. The
``cardiomm`` command runs in a subprocess with a bounded timeout, so that a hang fails instead of blocking.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardiomm.data.conversion import convert
from cardiomm.data.ecg_dataset import METADATA_FILE, load_ecg_dataset
from test_cli_data import assert_counts_add_up, read_report, run_cli, write_ptbxl

# A `cardiomm` command line whose record reader kills its own process on one record (SIGKILL, as the
# out-of-memory killer does). The patch sits at module level so that worker processes get it whatever the
# multiprocessing start method (spawn and forkserver re-import this file).
KILLING_CLI = textwrap.dedent(
    """
    import os, signal, sys

    import cardiomm.data.conversion as conversion
    import cardiomm.processing.ecg_records as ecg_records

    KILL_AT = os.environ["KILL_AT_RECORD"]
    conversion.ROW_GROUP_BYTES = int(os.environ.get("ROW_GROUP_BYTES", conversion.ROW_GROUP_BYTES))
    _read = ecg_records.read_ecg_record


    def read_or_die(path):
        if os.path.basename(str(path)) == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return _read(path)


    ecg_records.read_ecg_record = read_or_die

    if __name__ == "__main__":
        from cardiomm.cli import main

        sys.exit(main(sys.argv[1:]))
    """
)


def _killing_cli(tmp_path: Path, record: str, monkeypatch, row_group_bytes: int | None = None) -> Path:
    script = tmp_path / "killing_cli.py"
    script.write_text(KILLING_CLI)
    monkeypatch.setenv("KILL_AT_RECORD", record)
    if row_group_bytes is not None:
        monkeypatch.setenv("ROW_GROUP_BYTES", str(row_group_bytes))
    return script


def test_rerun_after_a_killed_conversion_starts_clean_and_says_what_it_removed(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "ptbxl", tmp_path / "out"
    write_ptbxl(src, folds=[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 9, 10])
    args = ["data", "convert", "ptbxl", str(src), str(out), "--sampling-rate", "100", "--num-proc", "1"]
    # killed (SIGKILL, serial: the command itself) at record 11, after a first row group of train was written
    script = _killing_cli(tmp_path, "00011_lr", monkeypatch, row_group_bytes=1)
    killed = run_cli(args, tmp_path, script=script)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "data" / "train.parquet").is_file()  # a partial Parquet file, no footer
    assert not (out / METADATA_FILE).exists()

    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "did not finish" in rerun.stderr and "removed" in rerun.stderr
    assert str(Path("data") / "train.parquet") in rerun.stderr
    dataset_dict, _ = load_ecg_dataset(out)
    assert sum(len(dataset_dict[s]) for s in ("train", "validation", "test")) == 12
    report = read_report(out)
    assert report["status"] == "complete" and report["num_converted"] == 12
    assert str(Path("data") / "train.parquet") in report["removed_before_start"]

    # a finished conversion is replaced too, and says so
    capsys.readouterr()
    convert("ptbxl", src, out, sampling_rate=100, num_proc=1)
    assert "replacing the finished ptbxl conversion" in capsys.readouterr().err
    assert read_report(out)["num_converted"] == 12


def test_output_folder_with_foreign_parquet_files_is_never_deleted(tmp_path):
    src, out = tmp_path / "ptbxl", tmp_path / "out"
    write_ptbxl(src, folds=[1, 9, 10])
    (out / "data").mkdir(parents=True)
    foreign = out / "data" / "train.parquet"
    foreign.write_bytes(b"PAR1 somebody else's data")
    with pytest.raises(ValueError, match="not written by `cardiomm data convert`.*refusing to delete"):
        convert("ptbxl", src, out, sampling_rate=100, num_proc=1, progress=False)
    assert foreign.read_bytes() == b"PAR1 somebody else's data"
    assert sorted(p.name for p in out.rglob("*")) == ["data", "train.parquet"]  # nothing written either


def test_a_killed_worker_process_is_an_error_naming_the_record_not_a_hang(tmp_path, monkeypatch):
    src, out = tmp_path / "ptbxl", tmp_path / "out"
    write_ptbxl(src, folds=[1, 2, 3, 4, 5, 6, 9, 10])
    script = _killing_cli(tmp_path, "00005_lr", monkeypatch)
    run = run_cli(["data", "convert", "ptbxl", str(src), str(out), "--sampling-rate", "100", "--num-proc", "2"],
                  tmp_path, script=script, timeout=180)
    assert run.returncode == 1, run.stderr[-4000:]
    message = run.stderr
    assert "cardiomm: error:" in message and "worker process" in message and "died" in message
    assert "SIGKILL" in message and "record '5'" in message
    assert "Traceback" not in message
    assert not (out / METADATA_FILE).exists() and not list((out / "data").glob("*.parquet"))
    report = read_report(out)
    assert report["status"] == "failed" and "record '5'" in report["error"]


def test_bad_records_are_each_listed_with_their_reason_and_the_counts_add_up(tmp_path):
    src, out = tmp_path / "ptbxl", tmp_path / "out"
    records = write_ptbxl(src, folds=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
    # 2: corrupt data file (not a whole number of samples)
    records[2]["dat"].write_bytes(b"\x17\x2a" * 50 + b"!")
    # 3: truncated data file (a third of it)
    data = records[3]["dat"].read_bytes()
    records[3]["dat"].write_bytes(data[: len(data) // 3])
    # 4: header without the sampling frequency (WFDB would assume 250 Hz)
    header = records[4]["header"].read_text().splitlines()
    records[4]["header"].write_text("\n".join([" ".join(header[0].split()[:2])] + header[1:]) + "\n")
    # 5: signal units that are no voltage
    records[5]["header"].write_text(records[5]["header"].read_text().replace("/mV", "/degC"))
    # 11: data file missing
    records[11]["dat"].unlink()
    # 7: unparsable scp_codes; 8: no strat_fold (metadata defects, before any signal is read)
    database = pd.read_csv(src / "ptbxl_database.csv")
    database.loc[database.ecg_id == 7, "scp_codes"] = "{'NORM': 100.0"
    database.loc[database.ecg_id == 8, "strat_fold"] = np.nan
    database.to_csv(src / "ptbxl_database.csv", index=False)

    run = run_cli(["data", "convert", "ptbxl", str(src), str(out), "--sampling-rate", "100", "--num-proc", "1"],
                  tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]  # finished; the rejected records are reported
    bad = {"2": ("00002_lr",), "3": ("00003_lr",), "4": ("Hz", "sampling frequency"), "5": ("degC",),
           "7": ("scp_codes",), "8": ("strat_fold",), "11": ("00011_lr",)}  # a word each reason must hold
    report = read_report(out)
    assert report["status"] == "complete"
    assert (report["num_found"], report["num_converted"], report["num_skipped"]) == (11, 4, 7)
    reasons = {s["record"]: s for s in report["skipped"]}
    assert set(reasons) == set(bad)
    for record, words in bad.items():
        assert any(word in reasons[record]["reason"] for word in words), reasons[record]
    fold_split = {1: "train", 2: "train", 3: "train", 4: "train", 5: "train", 7: "train", 11: "train"}
    for record, entry in reasons.items():
        assert entry["split"] == fold_split.get(int(record), ""), entry
    assert report["records_by_split"] == {
        "train": {"found": 8, "converted": 2, "skipped": 6},
        "validation": {"found": 1, "converted": 1, "skipped": 0},
        "test": {"found": 1, "converted": 1, "skipped": 0},
        "unassigned": {"found": 1, "converted": 0, "skipped": 1},
    }
    assert_counts_add_up(report)
    dataset_dict, _ = load_ecg_dataset(out)
    assert {s: dataset_dict[s]["ecg_id"] for s in ("train", "validation", "test")} == {
        "train": ["1", "6"], "validation": ["9"], "test": ["10"]}
    # the printed summary names every rejected record with its reason
    lines = run.stdout.splitlines()
    for record, entry in reasons.items():
        listed = [line for line in lines if line.split()[:1] == [record]]
        assert listed and entry["reason"][:60] in listed[0], (record, run.stdout)
    assert "11 records found, 4 converted" in run.stdout
