"""The input checks: one weight rule whatever the batch size, tensor avg_factor checked like the float, value
checks without temporaries of the input's size, and an explicit check for code compiled with torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import qfocal
from qfocal._checks import _check_in_unit_interval, _check_sparse_target
from tests.conftest import assert_close


@pytest.mark.parametrize("n, c", [(4, 4), (6, 4)])
def test_weight_rule_does_not_depend_on_n_equal_c(n, c):
    x, t = torch.randn(n, c, dtype=torch.float64), torch.rand(n, c, dtype=torch.float64)
    elem = qfocal.quality_focal_loss(x, t, reduction="none")
    per_anchor = torch.rand(n, dtype=torch.float64)
    per_class = torch.rand(1, c, dtype=torch.float64)
    got = qfocal.quality_focal_loss(x, t, weight=per_anchor, reduction="none")
    assert_close(got, elem * per_anchor[:, None], f"per-anchor weight, N={n}, C={c}")
    got = qfocal.quality_focal_loss(x, t, weight=per_class, reduction="none")
    assert_close(got, elem * per_class, f"per-class weight, N={n}, C={c}")


def test_one_dimensional_weight_of_class_length_is_refused():
    x, t = torch.randn(6, 4), torch.rand(6, 4)
    with pytest.raises(
        ValueError, match=r"expected a shape \(6,\) \(per anchor.*per-class weight is \(1, 4\)\), got \(4,\)"
    ):
        qfocal.quality_focal_loss(x, t, weight=torch.ones(4))
    # 3-D logits: a 1-D weight has two dimensions fewer and broadcasts per class
    x3, t3 = torch.randn(2, 5, 4, dtype=torch.float64), torch.rand(2, 5, 4, dtype=torch.float64)
    w = torch.rand(4, dtype=torch.float64)
    assert_close(
        qfocal.varifocal_loss(x3, t3, weight=w, reduction="none"),
        qfocal.varifocal_loss(x3, t3, reduction="none") * w,
        "per-class weight of 3-D logits",
    )


@pytest.mark.parametrize("bad", [-2.0, float("nan"), float("inf")])
def test_tensor_avg_factor_is_checked_like_the_float(bad):
    x, t = torch.randn(5, 3), torch.rand(5, 3)
    with pytest.raises(ValueError, match="avg_factor: expected a value >= 0 and finite"):
        qfocal.quality_focal_loss(x, t, avg_factor=torch.tensor(bad))
    if bad == bad:  # NaN is refused by the float check as "expected a number"
        with pytest.raises(ValueError, match="avg_factor: expected a value >= 0 and finite"):
            qfocal.quality_focal_loss(x, t, avg_factor=bad)
    with qfocal.value_checks(False):  # hot loops may skip the host read
        qfocal.quality_focal_loss(x, t, avg_factor=torch.tensor(3.0))


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.cpu_memory_usage for e in prof.events()] + [0])


def test_value_checks_allocate_nothing_of_the_inputs_size():
    t = torch.rand(2000, 80)
    labels, scores = torch.randint(0, 81, (2000,)), torch.rand(2000)
    logits = torch.randn(2000, 80)
    assert _largest_allocation(lambda: ~((t >= 0) & (t <= 1))) >= t.numel()  # the probe sees such temporaries
    assert _largest_allocation(lambda: _check_in_unit_interval("target", t)) < 1024
    assert _largest_allocation(lambda: _check_sparse_target((labels, scores), logits)) < 1024
    d = torch.rand(2000, 4) * 15
    assert (
        _largest_allocation(lambda: qfocal.distribution_focal_loss(torch.randn(2000, 4, 17), d))
        < 3 * d.numel() * 8 * 17
    )


def test_bad_values_are_still_found_and_counted():
    t = torch.rand(10, 3)
    t[2, 1], t[7, 0] = 5.0, float("nan")
    with pytest.raises(
        ValueError, match=r"target: expected values in \[0, 1\], got 2 outside \(first: 5.0\)"
    ):
        qfocal.quality_focal_loss(torch.randn(10, 3), t)


def test_check_target_runs_where_the_losses_skip_their_checks():
    bad = torch.full((4, 3), 5.0)
    with pytest.raises(ValueError, match="target: expected values in"):
        qfocal.check_target(bad)
    with qfocal.value_checks(False), pytest.raises(ValueError, match="iou: expected values in"):
        qfocal.check_target(bad, name="iou")

    @torch.compile(backend="eager", fullgraph=False)
    def step(x, t):
        qfocal.check_target(t)
        return qfocal.quality_focal_loss(x, t)

    with pytest.raises(ValueError, match="target: expected values in"):
        step(torch.randn(4, 3), bad)
    assert torch.isfinite(step(torch.randn(4, 3), torch.rand(4, 3)))
