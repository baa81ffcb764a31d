"""Module-level ``__getattr__`` that imports a package's heavy public names on first use."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A PEP 562 ``__getattr__`` for ``package``: name -> module it is defined in.

    The first access imports the module and caches the value in the package's namespace.
    """

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
