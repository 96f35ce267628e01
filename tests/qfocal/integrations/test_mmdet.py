"""qfocal.integrations.mmdet against mmdetection's own loss code (mmdet 3.3.0, loaded as shipped, CPU).

Each registered loss is built from a config dict through ``mmdet.registry.MODELS``, next to mmdetection's class
of the same name built the same way, and both are run on the same inputs: values and ``d loss / d pred`` for
every constructor option, target form, weight shape, reduction and ``avg_factor``, in float32 and float64, with
logits of +-50 and +-100 in every batch, under qfocal's reference and fused (eager; inductor once) backends.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")
pytest.importorskip("mmdet")

from mmdet.registry import MODELS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope

import qfocal
from qfocal.integrations import mmdet as plugin
from tests.conftest import DTYPE_PRECISIONS, assert_close, doc_python_blocks
from tests.mmdet_oracle import load

MM = load()  # mmdetection's loss modules, registered in MODELS under their own names
DTYPES = [torch.float64, torch.float32]
BACKENDS = ["reference", "eager"]
# (reduction, avg_factor); mmdetection ignores avg_factor with "none".
REDUCTIONS = [("none", None), ("mean", None), ("mean", 7.5), ("sum", None), ("none", 7.5)]
SATURATED = (50.0, -50.0, 100.0, -100.0)
N, C = 37, 6


# ----------------------------------------------------------------------------------------------------------
# Inputs and comparison
# ----------------------------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(shape, dtype, seed):
    """Random logits whose first four rows are +50, -50, +100, -100 (saturated sigmoid both ways)."""
    x = torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * 3
    for row, value in enumerate(SATURATED):
        x[row] = value
    return x.to(dtype)


def _labels_scores(n, c, dtype, seed, background=-1):
    g = _gen(seed + 1)
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    labels[:4] = torch.tensor([0, 1, 2, c])[: min(4, n)]  # saturated rows: positives and one background
    labels[4:6] = background  # -1 (or c): background as mmdetection reads it
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    scores = scores * ((labels >= 0) & (labels < c)).to(dtype)
    return labels, scores


def _dense(labels, scores, c):
    """The (N, C) soft target equal to (labels, scores)."""
    pos = (labels >= 0) & (labels < c)
    t = torch.zeros(labels.shape[0], c, dtype=scores.dtype)
    t[pos, labels[pos]] = scores[pos]
    return t


def _value_and_grad(loss, pred, target, **kwargs):
    pred = pred.detach().clone().requires_grad_(True)
    out = loss(pred, target, **kwargs)
    (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), pred.grad


def _compare(ours, theirs, pred, target, name, **kwargs):
    v1, g1 = _value_and_grad(ours, pred, target, **kwargs)
    v2, g2 = _value_and_grad(theirs, pred, target, **kwargs)
    assert v1.dtype == v2.dtype == pred.dtype, f"{name}: dtypes {v1.dtype}, {v2.dtype}, pred {pred.dtype}"
    assert torch.isfinite(v1).all() and torch.isfinite(g1).all(), f"{name}: not finite"
    assert_close(v1, v2, f"{name} value")
    assert_close(g1, g2, f"{name} d/dpred")


def _pair(name, **cfg):
    """mmdetection's loss and qfocal's, both built from a config dict through mmdet's MODELS."""
    theirs = MODELS.build(dict(type=name, **cfg))
    ours = MODELS.build(dict(type=f"qfocal.{name}", **cfg))
    assert type(ours) is getattr(plugin, name)
    assert type(theirs).__module__.startswith("mmdet.models.losses")
    return ours, theirs


def _compare_reductions(name, cfg, pred, target, weight, label):
    """Every reduction of the config, with and without avg_factor (reduction_override: its own test)."""
    for reduction, avg_factor in REDUCTIONS:
        ours, theirs = _pair(name, reduction=reduction, **cfg)
        kw = {"weight": weight, "avg_factor": avg_factor}
        _compare(ours, theirs, pred, target, f"{label} {reduction} avg={avg_factor}", **kw)


# ----------------------------------------------------------------------------------------------------------
# Registry and config
# ----------------------------------------------------------------------------------------------------------
NAMES = ["QualityFocalLoss", "VarifocalLoss", "DistributionFocalLoss", "FocalLoss"]


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_the_plugin_class_not_the_python_object(name):
    cls = getattr(plugin, name)
    for registry in (MODELS, MMENGINE_MODELS, plugin.MODELS):
        built = registry.build(dict(type=f"qfocal.{name}"))
        assert type(built) is cls, f"{registry.scope}: {type(built)}"
        assert type(built) is not getattr(qfocal, name, None)
    # as inside an mmdet Runner, whose default scope is "mmdet"
    with DefaultScope.overwrite_default_scope("mmdet"):
        assert type(MODELS.build(dict(type=f"qfocal.{name}"))) is cls
    assert plugin.MODELS.scope == "qfocal" and plugin.MODELS.get(name) is cls
    # mmdetection's own class keeps its name
    assert type(MODELS.build(dict(type=name))) is getattr(getattr(MM, _MM_FILE[name]), name)


_MM_FILE = {
    "QualityFocalLoss": "gfocal_loss",
    "DistributionFocalLoss": "gfocal_loss",
    "VarifocalLoss": "varifocal_loss",
    "FocalLoss": "focal_loss",
}


def test_reimport_and_custom_imports_keep_one_registry():
    import importlib

    from mmengine.utils import import_modules_from_strings

    import_modules_from_strings(["qfocal.integrations.mmdet"])
    reloaded = importlib.reload(plugin)
    assert reloaded.MODELS is MMENGINE_MODELS.children["qfocal"]
    assert type(MODELS.build(dict(type="qfocal.QualityFocalLoss"))) is reloaded.QualityFocalLoss


def test_type_name_alone_finds_the_plugin_in_a_fresh_process():
    """No custom_imports: mmengine imports qfocal.registry for the scope 'qfocal', which registers the plugin."""
    code = textwrap.dedent(
        """
        import sys
        from mmengine.registry import MODELS
        loss = MODELS.build(dict(type="qfocal.QualityFocalLoss", use_sigmoid=True, beta=2.0))
        assert "qfocal.integrations.mmdet" in sys.modules
        print(type(loss).__module__, type(loss).__name__)
        """
    )
    src = str(Path(qfocal.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["qfocal.integrations.mmdet", "QualityFocalLoss"]


README = Path(__file__).resolve().parents[3] / "README.md"


def _mmdet_config(name: str) -> Path:
    """A config file shipped in the mmdet package (what ``mmdet::name`` refers to)."""
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs" / name


def test_docs_config_turns_gfl_r50_into_qfocal_losses_with_mmdets_numbers(tmp_path):
    """The config fragment of the README's "Use with mmdetection", applied to mmdet's own GFL R-50 config file."""
    from mmengine.config import Config

    fragment = next(b for b in doc_python_blocks("docs/frameworks/mmdet.md") if "_base_" in b)
    path = tmp_path / "gfl_r50_fpn_1x_coco_qfocal.py"
    path.write_text(fragment)
    cfg = Config.fromfile(str(path))
    base = Config.fromfile(str(_mmdet_config("gfl/gfl_r50_fpn_1x_coco.py")))
    assert cfg.custom_imports.imports == ["qfocal.integrations.mmdet"]
    head, base_head = cfg.model.bbox_head, base.model.bbox_head
    assert head.type == "GFLHead" and head.reg_max == base_head.reg_max == 16
    assert head.loss_bbox == base_head.loss_bbox
    ours_cls, theirs_cls = MODELS.build(head.loss_cls), MODELS.build(base_head.loss_cls)
    ours_dfl, theirs_dfl = MODELS.build(head.loss_dfl), MODELS.build(base_head.loss_dfl)
    assert type(ours_cls) is plugin.QualityFocalLoss and type(ours_dfl) is plugin.DistributionFocalLoss

    # GFLHead.loss_by_feat_single's calls, on the shapes it passes
    x = _logits((N, 80), torch.float32, seed=1)
    labels, scores = _labels_scores(N, 80, torch.float32, seed=1, background=80)
    label_weights = torch.ones(N)
    kw = {"weight": label_weights, "avg_factor": 5.0}
    _compare(ours_cls, theirs_cls, x, (labels, scores), "GFL loss_cls", **kw)
    corners = _logits((4 * 9, 17), torch.float32, seed=2)
    target_corners = torch.rand(4 * 9, generator=_gen(3)) * 15.99
    weight = torch.rand(9, generator=_gen(4))[:, None].expand(-1, 4).reshape(-1)
    _compare(ours_dfl, theirs_dfl, corners, target_corners, "GFL loss_dfl", weight=weight, avg_factor=4.0)


# ----------------------------------------------------------------------------------------------------------
# Values and gradients against mmdetection
# ----------------------------------------------------------------------------------------------------------
def _cases(forms):
    """(form, activated, dtype, backend); probabilities (activated=True) run no fused kernel: reference only."""
    return [
        (form, activated, dtype, backend)
        for form in forms
        for activated in (False, True)
        for dtype in DTYPES
        for backend in BACKENDS
        if not (activated and backend != "reference")
    ]


@pytest.mark.parametrize(
    ("form", "activated", "dtype", "backend"),
    _cases(["labels_scores", "dense"]),
)
def test_quality_focal_loss(form, activated, dtype, backend):
    x = _logits((N, C), dtype, seed=10)
    pred = x.sigmoid() if activated else x
    labels, scores = _labels_scores(N, C, dtype, seed=10)
    target = (labels, scores) if form == "labels_scores" else _dense(labels, scores, C)
    cfg = dict(use_sigmoid=True, beta=2.0, loss_weight=0.5, activated=activated)
    per_anchor = torch.rand(N, generator=_gen(11), dtype=torch.float64).to(dtype)
    with qfocal.backend(backend):
        for weight in (None, per_anchor):
            label = f"QFL {form} activated={activated} weight={weight is not None}"
            _compare_reductions("QualityFocalLoss", cfg, pred, target, weight, label)


@pytest.mark.parametrize(
    ("activated", "backend"), [(False, "reference"), (False, "eager"), (True, "reference")]
)
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_quality_focal_loss_other_betas(beta, activated, backend):
    x = _logits((N, C), torch.float64, seed=14)
    pred = x.sigmoid() if activated else x
    labels, scores = _labels_scores(N, C, torch.float64, seed=14)
    weight = torch.rand(N, generator=_gen(15), dtype=torch.float64)
    with qfocal.backend(backend):
        ours, theirs = _pair("QualityFocalLoss", beta=beta, activated=activated)
        _compare(ours, theirs, pred, (labels, scores), f"QFL beta={beta}", weight=weight, avg_factor=9.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quality_focal_loss_dense_target_with_extra_dims(dtype):
    """mmdetection's tensor target may be (N, C, *): it sums over dim 1, the weight is (N, *)."""
    x = _logits((5, C, 7), dtype, seed=12)
    target = torch.rand(5, C, 7, generator=_gen(12), dtype=torch.float64).to(dtype)
    target = target * (target > 0.6)
    weight = torch.rand(5, 7, generator=_gen(13), dtype=torch.float64).to(dtype)
    _compare_reductions("QualityFocalLoss", {"beta": 2.0}, x, target, weight, "QFL (N, C, 7)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("alpha_gamma", "iou_weighted"), [((0.75, 2.0), True), ((0.5, 1.5), False)])
def test_varifocal_loss(alpha_gamma, iou_weighted, dtype, backend):
    alpha, gamma = alpha_gamma
    x = _logits((N, C), dtype, seed=20)
    labels, scores = _labels_scores(N, C, dtype, seed=20)
    target = _dense(labels, scores, C)
    cfg = dict(use_sigmoid=True, alpha=alpha, gamma=gamma, iou_weighted=iou_weighted, loss_weight=2.0)
    g = _gen(21)
    weights = {
        "none": None,
        "(N, C)": torch.rand(N, C, generator=g, dtype=torch.float64).to(dtype),
        "(N, 1)": torch.rand(N, 1, generator=g, dtype=torch.float64).to(dtype),
        "(C,)": torch.rand(C, generator=g, dtype=torch.float64).to(dtype),
    }
    with qfocal.backend(backend):
        for wname, weight in weights.items():
            label = f"VFL iou_weighted={iou_weighted} weight {wname}"
            _compare_reductions("VarifocalLoss", cfg, x, target, weight, label)


def test_varifocal_per_class_weight_when_n_equals_c():
    """mmdetection multiplies (N, C) by a (N,) weight with broadcasting: with N == C it weights classes."""
    x = _logits((C, C), torch.float64, seed=22)
    target = torch.rand(C, C, generator=_gen(22), dtype=torch.float64) * (x > 0)
    weight = torch.rand(C, generator=_gen(23), dtype=torch.float64)
    _compare_reductions("VarifocalLoss", {}, x, target, weight, "VFL N == C, (N,) weight")


@pytest.mark.parametrize(
    ("form", "activated", "dtype", "backend"),
    _cases(["labels", "one_hot", "soft"]),
)
def test_focal_loss(form, activated, dtype, backend):
    x = _logits((N, C), dtype, seed=30)
    pred = x.sigmoid() if activated else x
    labels, scores = _labels_scores(N, C, dtype, seed=30, background=C)
    if form == "labels":
        target = labels
    elif form == "one_hot":
        target = _dense(labels, torch.ones_like(scores), C)
    else:
        target = _dense(labels, scores, C)
    cfg = dict(use_sigmoid=True, gamma=1.5, alpha=0.3, loss_weight=0.7, activated=activated)
    g = _gen(31)
    weights = {
        "none": None,
        "(N,)": torch.rand(N, generator=g, dtype=torch.float64).to(dtype),
        "(N, C)": torch.rand(N, C, generator=g, dtype=torch.float64).to(dtype),
        "(N * C,)": torch.rand(N * C, generator=g, dtype=torch.float64).to(dtype),
    }
    with qfocal.backend(backend):
        for wname, weight in weights.items():
            label = f"FL {form} activated={activated} weight {wname}"
            _compare_reductions("FocalLoss", cfg, pred, target, weight, label)


@pytest.mark.parametrize("activated", [False, True])
def test_focal_loss_label_minus_one_is_background(activated):
    """mmdetection's CPU path one-hot encodes labels and rejects -1; its CUDA kernel reads -1 as background."""
    x = _logits((N, C), torch.float64, seed=32)
    pred = x.sigmoid() if activated else x
    labels, _ = _labels_scores(N, C, torch.float64, seed=32, background=-1)
    assert (labels == -1).any()
    ours, theirs = _pair("FocalLoss", activated=activated)
    _compare(
        lambda p, t: ours(p, t),
        lambda p, t: theirs(p, torch.where(t < 0, C, t)),
        pred,
        labels,
        "FL label -1",
    )
    with pytest.raises(ValueError, match="above 6"):
        ours(pred, torch.full((N,), C + 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_distribution_focal_loss(dtype):
    reg_max = 8
    x = _logits((N, reg_max + 1), dtype, seed=40)
    target = torch.rand(N, generator=_gen(40), dtype=torch.float64) * (reg_max - 0.01)
    target[:6] = torch.tensor([0.0, 1.0, 3.5, 7.0, 7.99, 2.25])  # integers and the top bin
    target = target.to(dtype)
    g = _gen(41)
    for weight in (
        None,
        torch.rand(N, generator=g, dtype=torch.float64).to(dtype),
        torch.tensor(0.3, dtype=dtype),
    ):
        label = f"DFL weight {None if weight is None else tuple(weight.shape)}"
        _compare_reductions("DistributionFocalLoss", {"loss_weight": 0.25}, x, target, weight, label)


def test_reduction_override_of_every_loss():
    """A loss built with reduction='mean' and called with reduction_override, as PAA's head calls FocalLoss."""
    x = _logits((N, C), torch.float64, seed=42)
    labels, scores = _labels_scores(N, C, torch.float64, seed=42, background=C)
    dfl_x = _logits((N, 9), torch.float64, seed=43)
    dfl_t = torch.rand(N, generator=_gen(43), dtype=torch.float64) * 7.99
    weight = torch.rand(N, generator=_gen(44), dtype=torch.float64)
    cases = [
        ("QualityFocalLoss", x, (labels, scores), weight),
        ("VarifocalLoss", x, _dense(labels, scores, C), weight[:, None]),
        ("FocalLoss", x, labels, weight),
        ("DistributionFocalLoss", dfl_x, dfl_t, weight),
    ]
    for name, pred, target, w in cases:
        ours, theirs = _pair(name)
        for reduction, avg_factor in REDUCTIONS:
            kw = {"weight": w, "avg_factor": avg_factor, "reduction_override": reduction}
            _compare(ours, theirs, pred, target, f"{name} override {reduction} avg={avg_factor}", **kw)


# ----------------------------------------------------------------------------------------------------------
# Empty and all-background batches
# ----------------------------------------------------------------------------------------------------------
def _empty_cases(dtype):
    x = torch.zeros(0, C, dtype=dtype)
    labels, scores = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=dtype)
    return [
        ("QualityFocalLoss", {}, x, (labels, scores)),
        ("QualityFocalLoss", {}, x, torch.zeros(0, C, dtype=dtype)),
        ("QualityFocalLoss", {"activated": True}, x, (labels, scores)),
        ("VarifocalLoss", {}, x, torch.zeros(0, C, dtype=dtype)),
        ("FocalLoss", {}, x, labels),
        ("FocalLoss", {"activated": True}, x, labels),
        ("DistributionFocalLoss", {}, torch.zeros(0, 9, dtype=dtype), torch.zeros(0, dtype=dtype)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    for name, cfg, pred, target in _empty_cases(dtype):
        ours, theirs = _pair(name, **cfg)
        for reduction, avg_factor in [("none", None), ("sum", None), ("mean", 4.0)]:
            label = f"{name} {cfg} empty {reduction}"
            _compare(ours, theirs, pred, target, label, reduction_override=reduction, avg_factor=avg_factor)
        # reduction="mean" without avg_factor: mmdetection's 0 / 0 is nan; the plugin gives a connected 0
        assert torch.isnan(theirs(pred, target)), name
        p = pred.clone().requires_grad_(True)
        out = ours(p, target)
        out.backward()
        assert out.item() == 0.0 and p.grad.shape == p.shape, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_background_batch(dtype):
    x = _logits((N, C), dtype, seed=50)
    labels = torch.full((N,), C)
    labels[::3] = -1
    scores = torch.zeros(N, dtype=dtype)
    cases = [
        ("QualityFocalLoss", {}, x, (labels, scores)),
        ("QualityFocalLoss", {"activated": True}, x.sigmoid(), (labels, scores)),
        ("QualityFocalLoss", {}, x, torch.zeros(N, C, dtype=dtype)),
        ("VarifocalLoss", {}, x, torch.zeros(N, C, dtype=dtype)),
        ("FocalLoss", {}, x, torch.full((N,), C)),
        ("FocalLoss", {"activated": True}, x.sigmoid(), torch.full((N,), C)),
    ]
    for name, cfg, pred, target in cases:
        ours, theirs = _pair(name, **cfg)
        for reduction, avg_factor in REDUCTIONS:
            label = f"{name} {cfg} all background {reduction} {avg_factor}"
            _compare(ours, theirs, pred, target, label, reduction_override=reduction, avg_factor=avg_factor)


# ----------------------------------------------------------------------------------------------------------
# The fused backends
# ----------------------------------------------------------------------------------------------------------
def test_inductor_backend_matches_mmdet_once():
    """One small compile (seconds): GFL's call, QFL on (labels, scores) with per-anchor weights."""
    x = _logits((N, C), torch.float32, seed=60)
    labels, scores = _labels_scores(N, C, torch.float32, seed=60)
    weight = torch.rand(N, generator=_gen(61))
    with qfocal.backend("inductor"):
        ours, theirs = _pair("QualityFocalLoss")
        _compare(ours, theirs, x, (labels, scores), "QFL inductor", weight=weight, avg_factor=5.0)


# ----------------------------------------------------------------------------------------------------------
# Precision where mmdetection's forms are exact (and where torch's BCE, which mmdetection calls, is not)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_focal_loss_relative_precision_at_very_negative_logits(dtype):
    """t = 0, x << 0: mmdetection's factor p (1 - t) + (1 - p) t is p exactly; 1 - p_t rounds it off. The oracle
    is exact math (mpmath): mmdetection's own value there carries torch's BCE-with-logits error (x - logsigmoid(x)
    cancels: 1.3 % off at -12 in fp32 and -30 in fp64), which qfocal's BCE does not have."""
    mpmath = pytest.importorskip("mpmath")
    values = [-8.0, -10.0, -12.0] if dtype == torch.float32 else [-20.0, -25.0, -30.0]
    x = torch.tensor([values], dtype=dtype)
    target = torch.zeros_like(x)
    ours, theirs = _pair("FocalLoss", reduction="none")  # alpha 0.25, gamma 2
    v1, g1 = _value_and_grad(ours, x, target)
    upstream = torch.linspace(0.5, 1.5, x.numel(), dtype=torch.float64).tolist()  # as _value_and_grad
    exact_v, exact_g = [], []
    with mpmath.workdps(50):
        for xi, u in zip(values, upstream, strict=True):
            p, softplus = 1 / (1 + mpmath.exp(-xi)), mpmath.log1p(mpmath.exp(xi))
            exact_v.append(float(0.75 * p**2 * softplus))
            exact_g.append(float(u * 0.75 * (2 * p**2 * (1 - p) * softplus + p**3)))
    rtol = DTYPE_PRECISIONS[dtype][0]
    exact_v = torch.tensor([exact_v], dtype=torch.float64)
    exact_g = torch.tensor([exact_g], dtype=torch.float64)
    assert_close(v1.double(), exact_v, "focal value, relative", rtol=rtol, atol=0.0)
    assert_close(g1.double(), exact_g, "focal d/dx, relative", rtol=rtol, atol=0.0)
    v2, _ = _value_and_grad(theirs, x, target)
    assert (
        (v2.double() - exact_v).abs() / exact_v
    ).max() > rtol  # mmdetection's BCE error, which we do not copy


@pytest.mark.parametrize("dtype", DTYPES)
def test_distribution_focal_loss_targets_just_above_an_integer(dtype):
    """mmdetection's right-bin weight is target - left; 1 - (left + 1 - target) loses a tiny target - left."""
    tiny = 1e-30 if dtype == torch.float32 else 1e-200
    target = torch.tensor([tiny, 1e-20, 1e-9, 3.0 + 1e-6, 5.25], dtype=dtype)
    x = torch.zeros(5, 9, dtype=dtype)
    x[:, 1:] = -60.0  # nearly all mass on bin 0, so the right bin's term is the whole difference
    ours, theirs = _pair("DistributionFocalLoss", reduction="none")
    v1, g1 = _value_and_grad(ours, x, target)
    v2, g2 = _value_and_grad(theirs, x, target)
    rtol = DTYPE_PRECISIONS[dtype][0]
    assert_close(v1, v2, "DFL value, relative", rtol=rtol, atol=0.0)
    assert_close(g1[:, 1], g2[:, 1], "DFL d/dx right bin, relative", rtol=rtol, atol=0.0)


# ----------------------------------------------------------------------------------------------------------
# Refused options and inputs
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "error", "match"),
    [
        (dict(type="qfocal.QualityFocalLoss", use_sigmoid=False), ValueError, "use_sigmoid: expected True"),
        (dict(type="qfocal.VarifocalLoss", use_sigmoid=False), ValueError, "use_sigmoid: expected True"),
        (dict(type="qfocal.FocalLoss", use_sigmoid=False), ValueError, "use_sigmoid: expected True"),
        (dict(type="qfocal.QualityFocalLoss", beta=-1.0), ValueError, "beta: expected a finite value >= 0"),
        (dict(type="qfocal.FocalLoss", gamma=-2.0), ValueError, "gamma: expected a finite value >= 0"),
        (dict(type="qfocal.VarifocalLoss", gamma=float("inf")), ValueError, "gamma: expected"),
        (dict(type="qfocal.FocalLoss", alpha=-1.0), ValueError, r"alpha: expected a value in \[0, 1\]"),
        (dict(type="qfocal.FocalLoss", alpha=None), TypeError, r"alpha: expected a number in \[0, 1\]"),
        (dict(type="qfocal.VarifocalLoss", alpha=1.5), ValueError, r"alpha: expected a value in \[0, 1\]"),
        (dict(type="qfocal.VarifocalLoss", activated=True), TypeError, "activated"),
        (dict(type="qfocal.DistributionFocalLoss", use_sigmoid=True), TypeError, "use_sigmoid"),
        (dict(type="qfocal.QualityFocalLoss", alpha=0.25), TypeError, "alpha"),
        (dict(type="qfocal.QualityFocalLoss", reduction="avg"), ValueError, "reduction: expected one of"),
        (dict(type="qfocal.VarifocalLoss", iou_weighted=1), TypeError, "iou_weighted: expected a bool"),
        (dict(type="qfocal.FocalLoss", activated="yes"), TypeError, "activated: expected a bool"),
        (
            dict(type="qfocal.DistributionFocalLoss", loss_weight="1"),
            TypeError,
            "loss_weight: expected a real",
        ),
        (dict(type="qfocal.DistributionFocalLoss", loss_weight=math.nan), ValueError, "loss_weight"),
    ],
)
def test_unsupported_options_fail_when_built(cfg, error, match):
    with pytest.raises(error, match=match):
        MODELS.build(cfg)


def test_bad_forward_arguments_are_refused_with_what_was_expected():
    x = _logits((N, C), torch.float32, seed=70)
    labels, scores = _labels_scores(N, C, torch.float32, seed=70)
    qfl, vfl = plugin.QualityFocalLoss(), plugin.VarifocalLoss()
    dfl, fl = plugin.DistributionFocalLoss(), plugin.FocalLoss()
    dense = _dense(labels, scores, C)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        qfl(x, (labels, scores), reduction_override="avg")
    with pytest.raises(ValueError, match=r"weight: expected a shape broadcastable to \(37,\)"):
        qfl(x, (labels, scores), weight=torch.ones(N, C))  # mmdet: a broadcast error
    with pytest.raises(ValueError, match=r"weight: expected a shape broadcastable to \(37,\)"):
        qfl(x, (labels, scores), weight=torch.ones(N, 1))  # mmdet: silently (N, N)
    with pytest.raises(ValueError, match=r"weight: expected a shape broadcastable to \(37, 6\)"):
        vfl(x, dense, weight=torch.ones(N))  # per anchor is (N, 1) here, as in mmdet
    with pytest.raises(ValueError, match=r"weight: expected shape \(37, 6\)"):
        fl(x, labels.clamp(min=0), weight=torch.ones(N, 2))
    with pytest.raises(ValueError, match="avg_factor: expected None"):
        vfl(x, dense, reduction_override="sum", avg_factor=3.0)  # as mmdet
    with pytest.raises(ValueError, match=r"pred: expected shape \(N, n \+ 1\)"):
        dfl(torch.zeros(2, 9, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="target: expected a dense target of pred's shape"):
        qfl(x, dense[:, :3])
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        qfl(x, (labels.float(), scores))
    with pytest.raises(ValueError, match=r"scores: expected values in \[0, 1\]"):
        qfl(x, (labels, scores + 2.0 * (labels == 0)))
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\]"):
        plugin.QualityFocalLoss(activated=True)(x, (labels, scores))  # logits given as probabilities


def test_repr_and_attributes_match_mmdet():
    loss = MODELS.build(dict(type="qfocal.QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0))
    theirs = MODELS.build(dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0))
    for attr in ("use_sigmoid", "beta", "reduction", "loss_weight", "activated"):
        assert getattr(loss, attr) == getattr(theirs, attr), attr
    assert "beta=2.0" in repr(loss) and "loss_weight=1.0" in repr(loss)
