"""detector.lazy_import: the PEP 562 ``__getattr__`` of ``detector`` and ``detector.datasets``. What
it promises: importing either package (or the synthetic generator) does not import torch; a name
in the table is imported from its module on first use and then cached in the package; any other
name is an AttributeError naming the package and the name."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from detector.lazy_import import lazy_getattr

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_packages_does_not_import_torch():
    """In a fresh interpreter: ``import detector, detector.datasets`` and the generator's module
    leave torch unimported (``python -m detector.datasets.synthetic`` relies on it)."""
    code = ("import sys, detector, detector.datasets, detector.datasets.synthetic; "
            "print(sorted(m for m in ('torch', 'torchvision', 'detector.retinanet', 'detector.datasets.loader') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_name_is_imported_on_first_use_then_cached(monkeypatch):
    """A throwaway package whose table names ``json.dumps``: first access imports it and stores it in
    the package's namespace (a second access never reaches ``__getattr__``)."""
    pkg = types.ModuleType("lazy_pkg_for_test")
    monkeypatch.setitem(sys.modules, pkg.__name__, pkg)
    calls = []
    inner = lazy_getattr(pkg.__name__, {"dumps": "json", "loads": "json"})

    def counting(name):
        calls.append(name)
        return inner(name)

    pkg.__getattr__ = counting
    import json

    assert pkg.dumps is json.dumps
    assert vars(pkg)["dumps"] is json.dumps  # cached in the package
    assert pkg.dumps is json.dumps
    assert calls == ["dumps"]
    with pytest.raises(AttributeError, match=r"module 'lazy_pkg_for_test' has no attribute 'nope'"):
        pkg.nope
    assert not hasattr(pkg, "also_not_there")


@pytest.mark.parametrize("package", ["detector", "detector.datasets"])
def test_every_public_name_resolves_to_its_module(package):
    """Every name of the package's ``__all__`` resolves, and a lazy one is the object its module
    defines (the table names the right module)."""
    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        value = getattr(pkg, name)
        if name in pkg._LAZY:
            assert value is getattr(importlib.import_module(pkg._LAZY[name]), name), (package, name)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        getattr(pkg, "no_such_name")
