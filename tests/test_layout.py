"""tests/README.md's table (module -> the tests that test it) cannot go stale silently: every module
of the packages pyproject.toml installs is a row (a new module without one fails here), every row is
a module that exists, and every test file a row names exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "tests" / "README.md"
ROW = re.compile(r"^\| `([^`]+\.py)` \|(.*)\|\s*$")


def packaged_modules(root: Path = REPO) -> set:
    """Paths (from the repository root) of the modules of the packages pyproject.toml installs,
    without ``__init__.py`` and ``__main__.py``."""
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return {f"{p.replace('.', '/')}/{f.name}" for p in packages for f in (root / p.replace(".", "/")).glob("*.py")
            if f.name not in ("__init__.py", "__main__.py")}


def table(text: str) -> dict:
    """module path -> the test files its row names, in order; a module named twice is an error."""
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"tests/README.md names {m.group(1)} twice"
            rows[m.group(1)] = re.findall(r"`(test_\w+\.py)`", m.group(2))
    return rows


def problems(rows: dict, modules: set, tests_dir: Path) -> list:
    out = [f"{m}: no row in tests/README.md" for m in sorted(modules - set(rows))]
    out += [f"{m}: a row in tests/README.md, but no such module" for m in sorted(set(rows) - modules)]
    out += [f"{m}: its row names no test file" for m, tests in rows.items() if not tests]
    out += [f"{m}: tests/{t} (named in tests/README.md) does not exist"
            for m, tests in rows.items() for t in tests if not (tests_dir / t).is_file()]
    return out


def test_the_readme_maps_every_module_to_existing_tests():
    modules = packaged_modules()
    assert {"detector/engine.py", "detector/datasets/coco.py", "sweeps/cli.py", "dashboards/stats.py",
            "benchmarks/measure.py"} <= modules  # the five packages are read
    rows = table(README.read_text())
    assert problems(rows, modules, REPO / "tests") == []


def test_the_check_sees_a_missing_row_a_stale_row_and_a_missing_test(tmp_path):
    (tmp_path / "test_a.py").write_text("")
    text = "| Module | Tested by |\n|---|---|\n| `pkg/a.py` | `test_a.py` |\n| `pkg/gone.py` | `test_gone.py` |\n"
    assert problems(table(text), {"pkg/a.py", "pkg/new.py"}, tmp_path) == [
        "pkg/new.py: no row in tests/README.md", "pkg/gone.py: a row in tests/README.md, but no such module",
        "pkg/gone.py: tests/test_gone.py (named in tests/README.md) does not exist"]
