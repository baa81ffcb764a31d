"""`python dashboards/speed_accuracy.py`: Figure 2 from recorded trials, beside the paper's points."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboards import results_io
from dashboards.figure_style import DPI
from dashboards.speed_accuracy import main, pareto_frontier
from tests.dashboard_fixtures import run_dashboard, run_main, speed_rows, trial_row, write_trials


def _outputs(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    paths = [p for p in proc.stdout.split("\n") if p.strip()]
    return {p.rsplit(".", 1)[1]: p for p in paths}


def _check_images(out: dict, width_in: float, height_in: float) -> None:
    with Image.open(out["png"]) as im:
        im.verify()
    with Image.open(out["png"]) as im:
        assert im.format == "PNG"
        assert im.size == (round(width_in * DPI), round(height_in * DPI))
    root = ET.parse(out["svg"]).getroot()
    assert root.tag.endswith("svg")


def _check_ours(plotted: dict, rows: list) -> None:
    """Every finished trial is a point on its depth's curve at (ms, AP x 100); nothing else is."""
    finished = [r for r in rows if r["status"] == "finished"]
    for depth in sorted({r["depth"] for r in finished}):
        want = [(r["ms_per_image"], 100 * r["AP"])  # along the input scale, as the paper's curves
                for r in sorted(finished, key=lambda r: r["min_size"]) if r["depth"] == depth]
        got = plotted[f"ours:{depth}:cpu_2_cores"]
        np.testing.assert_allclose(np.c_[got["x"], got["y"]], np.array(want))
    ours_points = sum(len(v["x"]) for k, v in plotted.items() if k.startswith("ours:"))
    assert ours_points == len(finished)


def _brute_force_front(points: list) -> list:
    return sorted(p for p in points
                  if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points))


def test_figure_from_parquet(tmp_path):
    rows = speed_rows()
    write_trials(tmp_path / "results", "speed_accuracy", rows)
    out = _outputs(run_dashboard("speed_accuracy.py", "--results", str(tmp_path / "results")))
    assert set(out) == {"png", "svg", "json"}
    assert out["png"].startswith(str(tmp_path / "results" / "dashboards"))
    _check_images(out, 10.5, 4.3)
    data = json.loads(open(out["json"]).read())
    plotted = data["plotted"]
    _check_ours(plotted, rows)
    finished = [(r["ms_per_image"], 100 * r["AP"]) for r in rows if r["status"] == "finished"]
    front = plotted["pareto:cpu_2_cores"]
    np.testing.assert_allclose(np.c_[front["x"], front["y"]], np.array(_brute_force_front(finished)))
    # the paper's RetinaNet points and detectors A-G, exactly as in its tables
    t1e = pd.read_csv(results_io.PAPER_DIR / "table1e_speed_accuracy.csv")
    for depth in (50, 101):
        want = t1e[t1e.depth == depth].sort_values("time_ms")
        assert plotted[f"paper:{depth}"]["x"] == want["time_ms"].tolist()
        assert plotted[f"paper:{depth}"]["y"] == want["AP"].tolist()
    comp = pd.read_csv(results_io.PAPER_DIR / "figure2_competitors.csv")
    assert plotted["competitors"] == {"x": comp["time_ms"].astype(float).tolist(), "y": comp["AP"].tolist()}
    assert [c["min_size"] for c in data["ours"]] == [[128, 192, 256], [128, 192, 256]]
    assert data["omitted"] == 1  # the diverged trial
    svg = open(out["svg"]).read()
    for gid in plotted:
        assert f'id="{gid}"' in svg
    for text in ("M40", "cpu (2 cores)", "Pareto frontier", "inference time (ms / image)", "YOLOv2"):
        assert text in svg


def test_figure_from_mlflow(tmp_path, dashboards_mlflow_uri, capsys):
    """A real SQLite MLflow store as the sweeps' own recording writes it (parent run per sweep,
    nested child run per trial), read in this process (a subprocess would spend its time
    importing MLflow)."""
    rows = speed_rows()
    out = _outputs(run_main(main, ["--mlflow-uri", dashboards_mlflow_uri, "--experiment", "speed_accuracy",
                                   "--out", tmp_path / "figs"], capsys))
    _check_images(out, 10.5, 4.3)
    _check_ours(json.loads(open(out["json"]).read())["plotted"], rows)


def test_overlay_layout_and_several_devices(tmp_path, capsys):
    rows = speed_rows()[:3] + [trial_row("speed_accuracy", "gpu_d50", ms_per_image=9.0, device_name="NVIDIA H200",
                                         metrics={"AP": 0.4}, depth=50, min_size=256, max_size=256)]
    write_trials(tmp_path, "speed_accuracy", rows)
    out = _outputs(run_main(main, ["--results", tmp_path, "--layout", "overlay"], capsys))
    _check_images(out, 8.6, 4.4)
    plotted = json.loads(open(out["json"]).read())["plotted"]
    assert plotted["ours:50:NVIDIA_H200"] == {"x": [9.0], "y": [pytest.approx(40.0)]}
    assert {"pareto:NVIDIA_H200", "pareto:cpu_2_cores"} <= set(plotted)  # one frontier per device
    assert "NVIDIA H200" in open(out["svg"]).read()


def test_nothing_recorded_says_which_sweep_to_run(tmp_path):
    proc = run_dashboard("speed_accuracy.py", "--results", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "no speed_accuracy trials" in proc.stderr
    assert "python sweeps/speed_accuracy.py" in proc.stderr
    assert not (tmp_path / "o").exists()  # no empty figure


def test_only_unfinished_trials_is_an_error(tmp_path, capsys):
    write_trials(tmp_path, "speed_accuracy", [r for r in speed_rows() if r["status"] != "finished"])
    proc = run_main(main, ["--results", tmp_path], capsys)
    assert proc.returncode != 0 and "no finished speed_accuracy trials" in proc.stderr


def test_metric_in_percent_is_rejected(tmp_path, capsys):
    rows = speed_rows()
    rows[0]["AP"] = 30.0  # percent, not a fraction
    write_trials(tmp_path, "speed_accuracy", rows)
    proc = run_main(main, ["--results", tmp_path], capsys)
    assert proc.returncode != 0
    assert "AP must be a fraction in [0, 1]" in proc.stderr and "d18_s128" in proc.stderr


def test_pareto_frontier_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ms, ap = rng.integers(1, 30, 15).astype(float), rng.integers(1, 30, 15).astype(float)
        idx = pareto_frontier(ms, ap)
        got = sorted(set(zip(ms[idx], ap[idx])))
        assert got == _brute_force_front(sorted(set(zip(ms, ap))))


# Numbers typed from the paper (Lin et al., ICCV 2017): every file, its row count and a few
# published values per table, so an edited or truncated copy of the paper's numbers fails.
PUBLISHED = {
    "table1a_alpha_ce": (7, [({"alpha": 0.10}, "AP", 0.0), ({"alpha": 0.75}, "AP", 31.1),
                             ({"alpha": 0.999}, "AP50", 41.7)]),
    "table1b_gamma_alpha_fl": (7, [({"gamma": 2.0}, "AP", 34.0), ({"gamma": 5.0}, "AP75", 34.8),
                                   ({"gamma": 0.5}, "alpha", 0.5)]),
    "table1c_anchor_density": (7, [({"num_scales": 2, "num_aspect_ratios": 3}, "AP", 34.2),
                                   ({"num_scales": 1, "num_aspect_ratios": 1}, "AP", 30.3)]),
    "table1d_fl_vs_ohem": (10, [({"method": "FL"}, "AP", 36.0),
                                ({"method": "OHEM", "batch_size": 128, "nms_thresh": 0.5}, "AP", 32.8),
                                ({"method": "OHEM 1:3", "batch_size": 512}, "AP", 24.0)]),
    "table1e_speed_accuracy": (10, [({"depth": 101, "scale": 800}, "AP", 37.8),
                                    ({"depth": 101, "scale": 800}, "time_ms", 198),
                                    ({"depth": 50, "scale": 400}, "time_ms", 64),
                                    ({"depth": 50, "scale": 600}, "AP", 34.3)]),
    "table2_state_of_the_art": (8, [({"method": "RetinaNet"}, "AP", 39.1),
                                    ({"method": "YOLOv2"}, "AP", 21.6)]),
    "figure2_competitors": (7, [({"label": "G"}, "AP", 36.2), ({"label": "G"}, "time_ms", 172),
                                ({"label": "A"}, "time_ms", 25)]),
    # Libra R-CNN (Pang et al. CVPR 2019) Table 1 on test-dev, and mmdetection's configs/libra_rcnn README
    "libra_retinanet": (3, [({"model": "RetinaNet (their re-implementation)"}, "AP", 35.8),
                            ({"split": "test-dev", "backbone": "ResNet-50-FPN", "schedule": "1x",
                              "model": "Libra RetinaNet (balanced feature pyramid + balanced L1)"}, "AP", 37.8),
                            ({"split": "val2017"}, "AP", 37.7)]),
}


def test_paper_data_holds_the_published_numbers():
    names = sorted(p.stem for p in results_io.PAPER_DIR.glob("*.csv"))
    assert names == sorted(PUBLISHED), names
    for name, (n_rows, checks) in PUBLISHED.items():
        table = pd.read_csv(results_io.PAPER_DIR / f"{name}.csv")
        assert len(table) == n_rows, name
        for where, column, value in checks:
            row = table
            for key, want in where.items():
                row = row[row[key] == want]
            assert len(row) == 1, (name, where)
            assert row[column].item() == pytest.approx(value), (name, where, column)



def test_seeds_are_one_point_with_error_bars_in_both_axes(tmp_path, capsys):
    rows = []
    for seed, (ap, ms, q1, q3) in enumerate(((0.30, 20.0, 19.0, 22.0), (0.31, 21.0, 20.0, 23.0),
                                             (0.32, 22.0, 21.0, 27.0))):
        row = trial_row("speed_accuracy", f"d18_s256_{seed}", metrics={"AP": ap}, ms_per_image=ms, seed=seed,
                        depth=18, min_size=256, max_size=256)
        rows.append({**row, "ms_per_image_q1": q1, "ms_per_image_q3": q3,
                     "timing_method": "timing pass: alone on node x"})
    write_trials(tmp_path, "speed_accuracy", rows)
    out = _outputs(run_main(main, ["--results", str(tmp_path)], capsys))
    data = json.loads(open(out["json"]).read())
    (curve,) = data["ours"]
    # AP 30, 31, 32: mean 31, sd 1, se 0.57735, t(0.975, 2) = 4.302653: 31 +- 2.484
    assert (curve["AP"], curve["n"]) == ([pytest.approx(31.0)], [3])
    assert curve["AP_low"] == [pytest.approx(31 - 2.484138, abs=1e-5)]
    assert curve["AP_high"] == [pytest.approx(31 + 2.484138, abs=1e-5)]
    # ms: the mean of the medians (21) and of the quartiles (20, 24)
    assert (curve["ms"], curve["ms_q1"], curve["ms_q3"]) == ([21.0], [20.0], [24.0])
    assert data["plotted"]["ours:18:cpu_2_cores"] == {"x": [21.0], "y": [pytest.approx(31.0)]}
    assert data["timing"].startswith("timed alone")


def test_a_diverged_seed_counts_as_ap_0_in_its_settings_point_as_in_the_findings():
    """The speed/accuracy sweep's R-34 at 144 px diverged at 1 of 5 seeds: the findings averaged
    it as AP 0 (25.3) while Figure 2 dropped it (31.7, "unfinished"). Now both average the same
    seeds; the time is the timed seeds' mean. A setting diverged at every seed stays out."""
    from dashboards.speed_accuracy import build_series

    rows = [trial_row("speed_accuracy", f"s{s}", seed=s, ms_per_image=ms, metrics={"AP": ap}, depth=34,
                      min_size=144, max_size=240) for s, ms, ap in ((0, 12.0, 0.40), (1, 14.0, 0.44))]
    rows.append(trial_row("speed_accuracy", "s2", seed=2, status="diverged", ms_per_image=None, depth=34,
                          min_size=144, max_size=240))
    rows.append(trial_row("speed_accuracy", "all_div", seed=0, status="diverged", ms_per_image=None, depth=34,
                          min_size=240, max_size=400))
    series = build_series(results_io._normalise(pd.DataFrame(rows), "speed_accuracy", "test"))
    [curve] = series["ours"]
    assert curve["min_size"] == [144] and curve["n"] == [3]
    assert curve["AP"][0] == pytest.approx((40.0 + 44.0 + 0.0) / 3)
    assert curve["ms"][0] == pytest.approx(13.0)
    assert series["diverged"] == 1 and series["omitted"] == 1


@pytest.mark.parametrize("layout", ["panels", "overlay"])
def test_the_legend_lies_outside_the_plot_it_describes(layout):
    """loc="best" avoided the points but not the lines between them: the note-sized legend sat on
    the R-18 line. Outside the axes it hides neither."""
    from dashboards.speed_accuracy import build_series, draw

    rows = speed_rows()
    series = build_series(results_io._normalise(pd.DataFrame(rows), "speed_accuracy", "test"))
    fig = draw(series, layout)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)  # not cut off
