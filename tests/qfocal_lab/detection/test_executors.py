"""Where a compare's runs train (qfocal_lab.detection.executors): the local pool, and a cluster through submitit
(its local executor here), with the job ids kept for --resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import pickle
import shutil

import numpy as np
import pytest

from qfocal.cli import main
from qfocal_lab.detection import compare
from qfocal_lab.detection.config import ConfigError
from qfocal_lab.detection.executors import ClusterJobError, cluster_seconds, parse_slurm
from tests.conftest import tiny_config

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason='needs submitit: pip install "qfocal[cluster]"'
)
_KEYS = ("AP", "AP50", "AP90", "score_iou_spearman")


def _losses(out, run) -> list[dict]:
    with open(out / f"{run['loss']}-s{run['seed']}" / "history.csv") as f:
        return [
            {k: v for k, v in row.items() if k.startswith("loss") or k.startswith("AP")}
            for row in csv.DictReader(f)
        ]


def _cfg(data, out, **kw):
    return tiny_config(data, out, plots=False, **kw)


def test_parse_slurm_reads_key_value_pairs_and_numbers():
    assert parse_slurm(["partition=gpu", "time=600", "mem_per_cpu=1.5", "comment=a=b"]) == {
        "partition": "gpu",
        "time": 600,
        "mem_per_cpu": 1.5,
        "comment": "a=b",
    }
    assert parse_slurm(None) == {} and parse_slurm({"gres": "gpu:1"}) == {"gres": "gpu:1"}
    with pytest.raises(ConfigError, match="slurm: expected key=value"):
        parse_slurm(["partition"])


def test_compare_refuses_an_unknown_executor(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="executor: expected one of local, submitit, got 'ray'"):
        compare(_cfg(tiny_data, tmp_path), losses=["focal"], seeds=[0], out=tmp_path / "c", executor="ray")


def test_missing_submitit_names_the_extra(tiny_data, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r'needs submitit: pip install "qfocal\[cluster\]"'):
        compare(
            _cfg(tiny_data, tmp_path), losses=["focal"], seeds=[0], out=tmp_path / "c", executor="submitit"
        )
    assert main(["compare", "--executor", "submitit", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "qfocal[cluster]"' in err, err


@needs_submitit
def test_unknown_slurm_parameter_is_one_line(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"--executor submitit: .*bogus"):
        compare(
            _cfg(tiny_data, tmp_path),
            losses=["focal"],
            seeds=[0],
            out=tmp_path / "c",
            executor="submitit",
            cluster="local",
            slurm=["bogus=1"],
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--slurm", "partition=gpu"], "--cluster-folder and --slurm: for --executor submitit"),
        (["compare", "--cluster-folder", "x"], "--cluster-folder and --slurm: for --executor submitit"),
        (["compare", "--executor", "slurm"], "argument --executor: invalid choice: 'slurm'"),
        (
            ["compare", "--framework", "yolov5", "--executor", "submitit"],
            "--executor: an option of the FCOS harness, not taken with --framework yolov5",
        ),
    ],
)
def test_cli_refuses_cluster_options_where_they_do_not_apply(argv, message, capsys, tmp_path):
    try:
        code = main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_help_gives_the_cluster_options_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--executor {local,submitit}" in text and "local (default" in text
    assert "--cluster-folder DIR" in text and "(default: OUT/submitit)" in text
    assert "--slurm KEY=VALUE" in text and "passed as slurm_KEY" in text


@needs_submitit
def test_cluster_seconds_reads_the_result_pickles_of_finished_jobs(tmp_path):
    # jobs.json as the compare writes it; submitit's result pickles ("%j_%t_result.pkl") as its jobs leave them
    runs = {
        "focal-s0": {"job_id": "101", "loss": "focal", "seed": 0},
        "qfl-s0": {"job_id": "102", "loss": "qfl", "seed": 0},
        "vfl-s0": {"job_id": "103", "loss": "vfl", "seed": 0},  # still running: no result yet
    }
    (tmp_path / "jobs.json").write_text(json.dumps({"cluster": "slurm", "runs": runs}))
    with open(tmp_path / "101_0_result.pkl", "wb") as fh:
        pickle.dump(("success", ({"AP": 1.0}, 12.5)), fh)
    with open(tmp_path / "102_0_result.pkl", "wb") as fh:
        pickle.dump(("error", "Traceback ..."), fh)
    assert cluster_seconds(tmp_path) == {("focal", 0): 12.5}


@needs_submitit
def test_submitit_compare_equals_the_local_pool(tiny_data, tmp_path):
    base = _cfg(tiny_data, tmp_path)
    kw = {"losses": ["focal", "qfl"], "seeds": [0], "log": lambda m: None}
    pool = compare(base, out=tmp_path / "pool", jobs=2, **kw)
    cluster = compare(base, out=tmp_path / "cluster", executor="submitit", cluster="local", **kw)
    assert [(r["loss"], r["seed"]) for r in cluster["runs"]] == [("focal", 0), ("qfl", 0)]
    for a, b in zip(pool["runs"], cluster["runs"], strict=True):
        np.testing.assert_equal({k: a[k] for k in _KEYS}, {k: b[k] for k in _KEYS}, err_msg=a["loss"])
        # the same training, step for step: every loss of the run's history (times apart)
        for run in ("pool", "cluster"):
            assert (tmp_path / run / f"{a['loss']}-s0" / "history.csv").is_file()
        np.testing.assert_equal(
            _losses(tmp_path / "pool", a), _losses(tmp_path / "cluster", b), err_msg=a["loss"]
        )
    jobs = json.loads((tmp_path / "cluster" / "submitit" / "jobs.json").read_text())
    assert jobs["cluster"] == "local" and sorted(jobs["runs"]) == ["focal-s0", "qfl-s0"]
    assert all(r["seconds"] > 0 for r in cluster["runs"])


@needs_submitit
def test_failed_job_then_resume_collects_the_finished_run_and_submits_the_rest(tiny_data, tmp_path):
    base = _cfg(tiny_data, tmp_path)
    out = tmp_path / "c"
    blocker = out / "qfl-s0" / "metrics.json"
    blocker.mkdir(parents=True)  # a folder where the run's result goes: its job fails before training
    kw = {"losses": ["focal", "qfl"], "seeds": [0], "executor": "submitit", "cluster": "local"}
    with pytest.raises(ClusterJobError, match=r"1 of 2 runs failed on the cluster: qfl-s0 \(job "):
        compare(base, out=out, log=lambda m: None, **kw)
    first = json.loads((out / "compare.json").read_text())
    assert [r["loss"] for r in first["runs"]] == ["focal"]
    jobs_before = json.loads((out / "submitit" / "jobs.json").read_text())["runs"]
    trained = (out / "focal-s0" / "last.pt").stat().st_mtime_ns
    shutil.rmtree(blocker)
    lines: list[str] = []
    again = compare(base, out=out, resume=True, log=lines.append, **kw)
    assert [(r["loss"], r["seed"]) for r in again["runs"]] == [("focal", 0), ("qfl", 0)]
    assert any(line.startswith("focal seed 0: reusing") for line in lines), lines
    assert (out / "focal-s0" / "last.pt").stat().st_mtime_ns == trained  # not trained again
    assert again["runs"][0]["seconds"] == pytest.approx(first["runs"][0]["seconds"])
    jobs_after = json.loads((out / "submitit" / "jobs.json").read_text())["runs"]
    assert jobs_after["focal-s0"] == jobs_before["focal-s0"]  # not submitted again
    assert jobs_after["qfl-s0"]["job_id"] != jobs_before["qfl-s0"]["job_id"]
    assert (out / "qfl-s0" / "metrics.json").is_file()


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from qfocal_lab.detection.compare import exit_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent, initargs=(os.getpid(), 0.1),
    )
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(0.5)
    os._exit(0)  # killed: no pool shutdown
"""


def test_parallel_workers_do_not_outlive_a_killed_compare(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "killed.py"
    script.write_text(_ORPHAN_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail(f"worker {worker} still ran 20 s after its compare was killed")
