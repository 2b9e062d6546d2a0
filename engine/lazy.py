"""Lazy package attributes (PEP 562): a package lists which submodule defines each public
name, and a name's submodule is imported on first use. Importing a light part of the
package (the CLI's registration, the error types) then never loads torch."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, table: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """-> (__getattr__, __dir__) for `package`, whose names live in the submodules `table`
    names (relative, e.g. ".model"). Resolved names are cached in `namespace`."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__
