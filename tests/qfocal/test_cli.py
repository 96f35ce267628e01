"""The ``qfocal`` command registers every subcommand the README documents."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from qfocal.cli import build_parser, main

COMMANDS = (
    "table",
    "plot",
    "bench",
    "data",
    "train",
    "evaluate",
    "compare",
    "demo",
    "yolov5-train",
    "ultralytics-train",
)


def test_every_documented_subcommand_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = set(COMMANDS) - set(sub.choices)
    assert not missing, f"qfocal lacks subcommands {sorted(missing)}"


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error():
    with pytest.raises(SystemExit) as info:
        main(["tabel"])
    assert info.value.code == 2


# (argv, expected exit code): 2 for a bad argument, 1 for a missing or damaged file. Each gives one line
# "qfocal <cmd>: error: ..." and no traceback.
def _bad_inputs(tmp: Path) -> list[tuple[list[str], int]]:
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder\n")
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a checkpoint at all")
    truncated = tmp / "truncated.pt"
    torch.save({"model": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    malicious = tmp / "malicious.pt"
    malicious.write_bytes(pickle.dumps(_Evil()))
    no_data = str(tmp / "nowhere")
    cases = [
        (["table", "--targets", "1,x", "--logits", "0,0"], 2),
        (["table", "--logits", "0,0"], 2),
        (["table", "--targets", "0.5", "--probs", "1.5"], 2),
        (["table", "--targets", "0.5,0", "--logits", "0"], 2),
        (["table", "--targets", "2", "--logits", "0"], 2),
        (["table", "--targets", "0.5", "--logits", "nan"], 2),
        (["table", "--gamma", "-1"], 2),
        (["table", "--alpha", "2"], 2),
        (["table", "--gamma", "abc"], 2),
        (["plot", "--targets", "a,b"], 2),
        (["plot", "--targets", "1.5"], 2),
        (["plot", "--gamma", "nan"], 2),
        (["plot", "--out", str(tmp / "x.txt")], 2),
        (["plot", "--out", str(tmp / "no" / "such" / "dir" / "x.png")], 1),
        (["bench", "--threads", "0"], 2),
        (["bench", "--threads", "x"], 2),
        (["bench", "--providers", "qfocal-fused,yolov6"], 2),
        (["bench", "--shapes", "10x"], 2),
        (["bench", "--repeats", "-1"], 2),
        (["bench", "--budget", "0"], 2),
        (["bench", "--dtypes", "float8"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--images", "1"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--imgsz", "8"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--val-fraction", "1.5"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--images", "x"], 2),
        (["data", "synth"], 2),
        (["data", "synth", "--out", str(a_file)], 2),
        (["train", "--loss", "qf"], 2),
        (["train", "--epochs", "0"], 2),
        (["train", "--imgsz", "100"], 2),
        (["train", "--lr", "0"], 2),
        (["train", "--lr", "x"], 2),
        (["train", "--amp", "fp16", "--device", "cpu"], 2),
        (["train", "--out", str(a_file)], 2),
        (["train", "--threads", "-1"], 2),
        (["train", "--bogus"], 2),
        (["train", "--data", no_data, "--out", str(tmp / "r")], 1),
        (["evaluate", "--weights", str(tmp / "missing.pt")], 1),
        (["evaluate", "--weights", str(garbage)], 1),
        (["evaluate", "--weights", str(truncated)], 1),
        (["evaluate", "--weights", str(malicious)], 1),
        (["compare", "--seeds", "0,0"], 2),
        (["compare", "--seeds", "0"], 2),
        (["compare", "--losses", "qfl,qfocal"], 2),
        (["compare", "--losses", "x"], 2),
        (["compare", "--resume", "--out", str(a_file)], 2),
        (["demo", "--out", str(a_file)], 2),
        (["pretrain", "--out", str(a_file)], 2),
        (["yolov5-train", "--obj-loss", "x"], 2),
        (["yolov5-train", "--fl-gamma", "x"], 2),
        (["yolov5-train", "--obj-loss", "qfl", "--qfl-beta", "-1", "--data", no_data], 2),
        (["ultralytics-train", "--cls-loss", "x"], 2),
        (["ultralytics-train", "--cls-loss", "qfl", "--beta", "-1", "data=x.yaml"], 2),
        (["ultralytics-train", "yolov8n.yaml", "epochs"], 2),
        (["ultralytics-train", "--bogus", "data=x.yaml"], 2),
        (["ultralytics-train", "yolov8n.yaml", "epochs=1"], 2),
        (["ultralytics-train", "yolov8n.yaml", f"data={no_data}.yaml"], 2),
        # numbers at the edges (shared bounded argparse types of qfocal._cli)
        (["train", "--lr", "1e308"], 2),
        (["train", "--lr", "nan"], 2),
        (["train", "--seed", str(2**63)], 2),
        (["train", "--seed", "-1"], 2),
        (["train", "--imgsz", "100000"], 2),
        (["train", "--threads", "10000"], 2),
        (["train", "--weight-decay", "inf"], 2),
        (["train", "--box-bias", "1e300"], 2),
        (["train", "--ddp-timeout", "inf"], 2),
        (["train", "--batch", "10000000"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--seed", "-1"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--imgsz", "100000"], 2),
        (["data", "synth", "--out", str(tmp / "d"), "--images", "100000000000"], 2),
        (["compare", "--seeds", "100000000000"], 2),
        (["compare", "--seeds", f"0,{2**40}"], 2),
        (["compare", "--threads", "10000"], 2),
        (["compare", "--jobs", "100000"], 2),
        (["compare", "--epochs", "100000000"], 2),
        (["compare", "--pretrain-epochs", "100000000"], 2),
        (["bench", "--shapes", "4000000000x80"], 2),
        (["bench", "--budget", "inf"], 2),
        (["bench", "--budget", "nan"], 2),
        (["bench", "--name", "../../x"], 2),
        (["bench", "--name", "a/b"], 2),
        (["bench", "--threads", "10000"], 2),
        (["bench", "--repeats", "10000000000"], 2),
        (["table", "--gamma", "inf"], 2),
        (["plot", "--gamma", "1e300"], 2),
        (["yolov5-train", "--fl-gamma", "inf"], 2),
        (["yolov5-train", "--vfl-alpha", "nan"], 2),
        (["ultralytics-train", "--beta", "nan", "data=x.yaml"], 2),
        (["ultralytics-train", "--cls-gain", "1e300", "data=x.yaml"], 2),
    ]
    if not torch.cuda.is_available():
        cases += [
            (["train", "--device", "cuda"], 2),
            (["evaluate", "--weights", "x.pt", "--device", "cuda"], 2),
        ]
        cases += [(["bench", "--device", "cuda"], 2)]
    return cases


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_every_subcommand_rejects_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = set()
    for argv, expected in _bad_inputs(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == expected, f"{argv}: exit {code}, expected {expected}\n{err}"
        assert "Traceback" not in err, f"{argv}:\n{err}"
        errors = [line for line in err.splitlines() if "error:" in line]
        prog = "qfocal " + " ".join(argv[:2] if argv[0] == "data" else argv[:1])
        assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: "), f"{argv}:\n{err}"
        assert "weights_only" not in err, f"{argv}:\n{err}"
        seen.add(argv[0])
    registered = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert seen == set(registered), f"subcommands without bad-input cases: {set(registered) - seen}"


def test_ctrl_c_anywhere_is_one_line_and_exit_130(monkeypatch, capsys):
    """A KeyboardInterrupt while the subcommands' modules are imported (the first seconds) or while one runs."""
    import importlib

    import qfocal.cli as cli

    real = importlib.import_module

    def interrupted(name, *args, **kwargs):
        if name.startswith("qfocal_lab.detection"):
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert main(["table"]) == 130
    err = capsys.readouterr().err
    assert err == "interrupted\n", err
    monkeypatch.setattr(cli.importlib, "import_module", real)

    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse_args", lambda argv: argparse.Namespace(func=stop, parser=None))
    assert main(["table"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_during_the_imports_of_the_console_command(tmp_path):
    """The entry point itself (``qfocal.cli:main``, as the console script runs it) imports nothing heavy before
    its handler is in place: SIGINT at once gives one line and exit 130, never a traceback."""
    import signal
    import subprocess
    import sys
    import time

    src = str(Path(__file__).resolve().parents[2] / "src")
    code = "import sys; from qfocal.cli import main; print('ready', flush=True); sys.exit(main(['table']))"
    # torch must not be imported before main's handler: the import of qfocal.cli stays light
    light = subprocess.run(
        [sys.executable, "-c", "import sys, qfocal.cli; print('torch' in sys.modules)"],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert light.stdout.strip() == "False", light.stdout + light.stderr
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": src},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.05)  # inside main, importing torch and the subcommands
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    if proc.returncode != 0:  # interrupted (a machine fast enough may have printed the table first)
        assert proc.returncode == 130 and err.strip() == "interrupted", (proc.returncode, err)
