"""Smoke test of ``qfocal bench``: a tiny run writes the CSV, the markdown report and the chart."""

from __future__ import annotations

import csv

import pytest

from qfocal.cli import main


def test_bench_quick_writes_csv_markdown_and_chart(tmp_path, capsys):
    providers = "qfocal-fused,qfocal-reference,bce,copy"
    argv = ["bench", "--quick", "--shapes", "64x8", "--repeats", "1", "--providers", providers]
    code = main([*argv, "--out-dir", str(tmp_path), "--name", "smoke", "--no-progress"])
    assert code == 0
    csv_path, md_path, png_path = (tmp_path / f"smoke.{ext}" for ext in ("csv", "md", "png"))
    for path in (csv_path, md_path, png_path):
        assert path.is_file() and path.stat().st_size > 0, f"{path.name} not written"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    seen = {(r["provider"], r["mode"]) for r in rows if r["status"] == "ok"}
    for provider in providers.split(","):
        assert (provider, "fwd") in seen, f"{provider} forward missing: {rows}"
    assert ("qfocal-fused", "fwd+bwd") in seen and ("bce", "fwd+bwd") in seen
    fused = next(r for r in rows if r["provider"] == "qfocal-fused" and r["mode"] == "fwd+bwd")
    assert float(fused["ratio_to_fused"]) == pytest.approx(1.0)
    text = md_path.read_text()
    assert "## 64x8 float32" in text and "torch" in text and "command: `qfocal bench" in text
    assert "wrote" in capsys.readouterr().out


def test_bench_rejects_unknown_provider(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--providers", "qfocal-fused,yolov6"])
    assert "expected a comma-separated subset" in capsys.readouterr().err
