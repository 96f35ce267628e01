"""The two tables of YOLOv5's "Add QFocalLoss()" thread, reproduced to every printed digit.

The thread prints ``pred_prob``; the logits behind them are 0.5, -1, -2, 1.25, 0, -1.25, 1.5, 2, -1.4 and 0
(``sigmoid`` of each rounds to the printed probability, and the losses then match every printed digit, including
QFL's 7.5373e-08 where target 0.6225 differs from sigmoid(0.5) = 0.62245933 in float32).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import qfocal
from qfocal.cli_losses import SEED1_LOGITS, SEED1_TARGETS, SEED_LOGITS, SEED_TARGETS

# Table 1 (the PR description), as printed.
TABLE1 = {
    "pred_prob": ("0.6225 0.2689 0.1192", "0.7773 0.5000 0.2227", "0.8176 0.8808 0.1978"),
    "focal": ("0.0937 0.0328 0.0039", "0.0166 0.1838 0.0199", "0.0039 1.3186 0.0145"),
    "qfocal": (
        "7.5373e-08 3.2768e-02 3.9179e-03",
        "4.8601e-03 1.8380e-01 1.9857e-02",
        "3.9233e-03 1.3186e+00 1.4545e-02",
    ),
}
# Table 2 (the author's check before merge), as printed.
TABLE2 = {
    "pred_prob": ("0.6225 0.2689 0.1192", "0.7773 0.5000 0.2227", "0.5000 0.8808 0.1978"),
    "normal": ("0.6628 0.3133 0.1269", "0.3769 0.6931 0.2519", "0.6931 0.1269 0.2204"),
    "focal": ("0.0937 0.0328 0.0039", "0.0166 0.1838 0.0199", "0.1225 0.0013 0.0145"),
    "qfocal": (
        "7.5373e-08 3.2768e-02 3.9179e-03",
        "4.8601e-03 1.8380e-01 1.9857e-02",
        "0.0000e+00 1.3060e-03 1.4545e-02",
    ),
}


def _printed(t: torch.Tensor, sci: bool) -> tuple[str, ...]:
    fmt = "{:.4e}" if sci else "{:.4f}"
    return tuple(" ".join(fmt.format(v) for v in row) for row in t.tolist())


def _losses(logits, targets):
    x, t = torch.tensor(logits), torch.tensor(targets)
    return {
        "pred_prob": torch.sigmoid(x),
        "normal": F.binary_cross_entropy_with_logits(x, t, reduction="none"),
        # YOLOv5's FocalLoss / QFocalLoss defaults: gamma 1.5, alpha 0.25.
        "focal": qfocal.sigmoid_focal_loss(x, t, gamma=1.5, alpha=0.25, reduction="none"),
        "qfocal": qfocal.quality_focal_loss(x, t, beta=1.5, alpha=0.25, reduction="none"),
    }


@pytest.mark.parametrize(
    ("logits", "targets", "table"),
    [(SEED1_LOGITS, SEED1_TARGETS, TABLE1), (SEED_LOGITS, SEED_TARGETS, TABLE2)],
    ids=["table1", "table2"],
)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_seed_table_every_printed_digit(logits, targets, table, backend):
    with qfocal.backend(backend):
        losses = _losses(logits, targets)
    for name, printed in table.items():
        got = _printed(losses[name], sci=name == "qfocal")
        assert got == printed, f"{name}: printed {printed}, computed {got}"


def test_seed_argument_focal_misorders_soft_targets_qfl_does_not():
    """The thread's point: focal gives the near-perfect prediction (0.6225 vs 0.6225) a larger loss than the
    poor one (0.7773 vs 0.9); QFL orders them correctly."""
    losses = _losses(SEED_LOGITS, SEED_TARGETS)
    assert losses["focal"][0, 0] > losses["focal"][1, 0]
    assert losses["qfocal"][0, 0] < losses["qfocal"][1, 0]
    assert losses["qfocal"][2, 0] == 0.0  # target 0.5 == sigmoid(0)


def test_qfocal_table_command_prints_the_seed_table():
    out = subprocess.run(
        [sys.executable, "-m", "qfocal", "table"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    out = re.sub(r" +", " ", out)
    for row in TABLE2["qfocal"] + TABLE2["focal"] + TABLE2["normal"]:
        assert ", ".join(row.split()) in out, f"row {row!r} missing from:\n{out}"


def test_qfocal_table_command_custom_and_bad_input():
    out = subprocess.run(
        [sys.executable, "-m", "qfocal", "table", "--targets", "1,0", "--probs", "0.9,0.1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    # hard targets: focal and QFL coincide; BCE of p=0.9 at t=1 is -ln 0.9 = 0.1054
    assert "0.1054" in out
    lines = out.splitlines()
    focal_row = lines[lines.index(next(n for n in lines if n.startswith("focal_loss"))) + 1]
    qfl_row = lines[lines.index(next(n for n in lines if n.startswith("qfocal_loss"))) + 1]
    assert focal_row == qfl_row
    assert "0.0008" in focal_row and "0.0025" in focal_row
    bad = subprocess.run(
        [sys.executable, "-m", "qfocal", "table", "--targets", "1,0", "--probs", "0.9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "shape" in bad.stderr


def test_qfocal_plot_writes_png(tmp_path):
    out = tmp_path / "losses.png"
    subprocess.run(
        [sys.executable, "-m", "qfocal", "plot", "--out", str(out), "--targets", "0,0.7,1"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
