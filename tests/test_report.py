"""sweeps.report: after a sweep, the dashboards its record feeds are drawn and the files they
wrote come back as paths (for the parent MLflow run), with nothing printed by the dashboards."""

from __future__ import annotations

from dashboard_fixtures import gamma_alpha_rows, write_trials

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
