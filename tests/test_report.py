"""sweeps.report: after a sweep, the dashboards its record feeds are drawn and the files they
wrote come back as paths (for the parent MLflow run), with nothing printed by the dashboards."""

from __future__ import annotations

import pytest
from tests.dashboard_fixtures import gamma_alpha_rows, write_trials

from sweeps.report import render


def test_render_returns_the_files_the_dashboards_wrote_and_prints_nothing(tmp_path, capsys):
    write_trials(tmp_path, "gamma_alpha", gamma_alpha_rows())
    files = render("gamma_alpha", tmp_path)
    names = sorted(p.name for p in files)
    assert {"findings.md", "findings.json", "ablation_tables.md"} <= set(names), names
    assert all(p.is_file() and p.parent == tmp_path / "dashboards" for p in files)
    assert sorted(p.name for p in (tmp_path / "dashboards").iterdir()) == names  # every file drawn, none twice
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    # a sweep whose figure has nothing to draw yet (no libra trials): skipped, not an error
    assert {p.name for p in render("libra", tmp_path)} == set(names)


@pytest.mark.parametrize("name, tagged", [("gamma_alpha", True), ("gamma_lr005", False)])
def test_verdicts_go_only_on_the_sweep_whose_record_the_findings_read(tmp_path, capsys, name, tagged):
    """`sweeps/gamma_alpha.py --name gamma_lr005` records under results/gamma_lr005/, but the
    findings read results/gamma_alpha/: its run and terminal must not carry their verdicts."""
    from types import SimpleNamespace

    from sweeps import runner

    write_trials(tmp_path, "gamma_alpha", gamma_alpha_rows())
    rows = gamma_alpha_rows()
    inv = SimpleNamespace(sweep=name, spec=SimpleNamespace(name="gamma_alpha"), todo=[object()],
                          args=SimpleNamespace(results_dir=str(tmp_path)))
    result, drawn = runner._findings(inv, rows)
    assert drawn and bool(result["verdicts"]) == tagged
    assert ("verdict i" in capsys.readouterr().out) == tagged
