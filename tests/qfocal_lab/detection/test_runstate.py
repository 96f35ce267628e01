"""What a run carries and saves (qfocal_lab.detection.runstate): the EMA of the weights, and resuming from
checkpoints, including those written before newer settings existed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qfocal_lab.detection import TrainConfig, load_checkpoint, train
from qfocal_lab.detection.train import (
    ModelEMA,
    evaluate_checkpoint,
)
from tests.conftest import tiny_config


def _cfg(data, out, **kw) -> TrainConfig:
    return tiny_config(data, out, plots=False, **kw)


def test_ema_update_is_the_weighted_average_with_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone().double() for k, v in start.items()}
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked += 1
        d = min(0.9, (1 + step) / (10 + step))  # the warm-up lets the first steps' weights fade fast
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                expected[k] = d * expected[k] + (1 - d) * v.double()
            else:
                expected[k] = v.clone()
        ema.update(model)
    assert ema.updates == 30
    got = ema.module.state_dict()
    for k, v in expected.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got[k], v), k
    # The average lags the weights: after a drift of 30 per parameter it is far from both ends.
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"], atol=1.0)
    assert all(not p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_ema_rejects_decay_outside_open_interval(decay):
    with pytest.raises(ValueError, match=r"decay: expected a value in \(0, 1\)"):
        ModelEMA(torch.nn.Linear(2, 2), decay)


def test_run_with_ema_evaluates_the_average_and_resumes_to_the_same_weights(tiny_data, tmp_path):
    full = _cfg(tiny_data, tmp_path / "full", loss="qfl", epochs=2, ema_decay=0.9)
    m_full = train(full, log=lambda m: None)
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    assert ckpt["ema"]["updates"] == 4  # 8 training images, batch 4, 2 epochs
    differs = [k for k, v in ckpt["model"].items() if not torch.equal(v, ckpt["ema"]["module"][k])]
    assert differs, "the EMA should differ from the weights"
    # evaluate_checkpoint takes the EMA (what the run reported), or the weights when asked.
    assert evaluate_checkpoint(tmp_path / "full" / "last.pt", device="cpu")["AP"] == pytest.approx(
        m_full["AP"]
    )
    raw = evaluate_checkpoint(tmp_path / "full" / "last.pt", device="cpu", ema=False)
    assert set(raw) >= {"AP", "AP90"}

    class Crash(Exception):
        pass

    def crash(epoch, row):
        if epoch == 1:
            raise Crash

    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with pytest.raises(Crash):
        train(part, on_epoch_end=crash, log=lambda m: None)
    assert train(part, resume=True, log=lambda m: None) == m_full
    resumed = load_checkpoint(tmp_path / "part" / "last.pt")
    assert resumed["ema"]["updates"] == 4
    for k, v in ckpt["ema"]["module"].items():
        assert torch.equal(v, resumed["ema"]["module"][k]), f"EMA weight {k} differs after resume"
    # A different decay is another run: resume refuses it.
    with pytest.raises(ValueError, match=r"ema_decay=0.9 \(now 0.5\)"):
        train(dataclasses.replace(part, ema_decay=0.5), resume=True, log=lambda m: None)


def test_resume_accepts_a_checkpoint_written_before_the_newer_settings(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, loss="focal", epochs=2)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=stop, log=lambda m: None)
    path = tmp_path / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("synth_val", "ema_decay", "box_bias"):  # an older qfocal did not know them
        del ckpt["config"][key]
    torch.save(ckpt, path)
    train(cfg, resume=True, log=lambda m: None)
    assert load_checkpoint(path)["epoch"] == 2
