"""The plan of a framework compare (qfocal_lab.detection.framework_plan): loss variants with gains and BCE
warm-ups."""

from __future__ import annotations

import pytest

from qfocal_lab.detection.frameworks import (
    Variant,
    parse_variant,
    parse_variants,
)


def test_variants():
    assert [v.name for v in parse_variants(["bce@1", "QFocal", "qfl@1", "vfl-unbalanced", "focal@0.5"])] == [
        "bce",
        "qfl",
        "qfl@1",
        "vfl@1",
        "focal@0.5",
    ]
    assert parse_variant("varifocal@auto") == parse_variant("vfl")
    assert parse_variant("qfl_unbalanced").gain == 1.0 and parse_variant("qfl").gain is None
    for bad in ("gfl", "x", "qfl@x", "qfl@-1", "qfl@inf", "qfl-unbalanced@2", 3):
        with pytest.raises(ValueError, match="losses: expected"):
            parse_variant(bad)
    with pytest.raises(ValueError, match="qfl@1 repeated"):
        parse_variants(["qfl@1", "qfl-unbalanced"])
    with pytest.raises(ValueError, match="bce repeated"):
        parse_variants(["bce", "bce@auto"])


# ----------------------------------------------------------------------------------------------------------
# Variants and checks
# ----------------------------------------------------------------------------------------------------------
def test_warmup_variants():
    assert parse_variant("qfl-warmup3") == Variant("qfl", None, 3)
    assert parse_variant("qfl-warmup3").name == "qfl-warmup3"
    assert parse_variant("qfocal@1-Warmup2").name == "qfl@1-warmup2"
    assert parse_variant("vfl-unbalanced-warmup1") == Variant("vfl", 1.0, 1)
    assert parse_variant("qfl@0.5_warmup4").name == "qfl@0.5-warmup4"
    assert parse_variant("qfl").warmup == 0
    for bad in ("qfl-warmup0", "qfl-warmupx", "qfl-warmup", "qfl-warmup-2", "gfl-warmup2"):
        with pytest.raises(ValueError, match="losses: expected"):
            parse_variant(bad)
    with pytest.raises(ValueError, match="warm-up on a loss other than bce"):
        parse_variant("bce-warmup2")
