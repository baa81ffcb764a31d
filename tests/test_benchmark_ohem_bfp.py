"""`python -m benchmarks --only ohem,bfp` at tiny sizes: the entries, each OHEM variant timed
with its own settings against the focal loss, on the side it is reported as (no timed assertions)."""

from __future__ import annotations

import torch

from benchmarks import ohem_bfp, run


def test_ohem_and_bfp_entries_at_tiny_sizes(monkeypatch):
    """Each OHEM entry times OHEM with its own settings against the focal loss, each on its side:
    ``time_pair`` is replaced by one that runs both sides once (watching which OHEM selection each
    runs) and reports known times (OHEM 30 ms, focal 10 ms)."""
    from detector import retinanet_loss

    selections, sides = [], []
    real_select = retinanet_loss.ohem_select

    def watched_select(*args, **kwargs):
        selections.append(kwargs)
        return real_select(*args, **kwargs)

    def run_each_side_once(ours, ref, device, repeats, warmup=1):
        n = len(selections)
        ours()
        m = len(selections)
        ref()
        sides.append((selections[n:m], selections[m:]))
        return {"ours_ms": 30.0, "reference_ms": 10.0, "speedup": 0.333}

    monkeypatch.setattr(retinanet_loss, "ohem_select", watched_select)
    monkeypatch.setattr(ohem_bfp, "time_pair", run_each_side_once)
    cpu = torch.device("cpu")
    ohem = ohem_bfp.bench_ohem(cpu, repeats=1, height=128, width=128, num_classes=4)
    assert [(v["method"], v["batch_size"], v["nms_thresh"]) for v in ohem["variants"]] == [
        ("OHEM", 128, 0.5), ("OHEM", 512, 0.5), ("OHEM", 128, 0.7), ("OHEM", 512, 0.7), ("OHEM 1:3", 128, 0.5),
        ("OHEM 1:3", 512, 0.5)]
    assert len(sides) == len(ohem["variants"])
    for v, (ohem_side, focal_side) in zip(ohem["variants"], sides):
        assert focal_side == []  # the reference is the focal loss: no OHEM selection
        assert len(ohem_side) == 1
        assert (ohem_side[0]["batch_size"], ohem_side[0]["nms_thresh"]) == (v["batch_size"], v["nms_thresh"])
        assert (ohem_side[0]["pos_fraction"] == 0.25) == (v["method"] == "OHEM 1:3")
        assert (v["ms"], v["focal_ms"], v["extra_ms"], v["ratio"]) == (30.0, 10.0, 20.0, 3.0)
    assert ohem["focal_ms"] == 10.0
    monkeypatch.undo()
    assert ohem["anchors_per_image"] == 9 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    bfp = ohem_bfp.bench_bfp(cpu, repeats=1, train_repeats=1, train_size=64, skip_step=True, height=128,
                             width=128, channels=8)
    assert bfp["module_ms"] > 0 and "with_ms" not in bfp
    monkeypatch.setattr(ohem_bfp, "bench_ohem", lambda *a, **k: {"called": True})
    monkeypatch.setattr(ohem_bfp, "bench_bfp", lambda *a, **k: {"called": True})
    out = run.main(["--only", "ohem,bfp"])
    assert out["ohem"] == {"called": True} and out["bfp"] == {"called": True} and "focal_loss" not in out
