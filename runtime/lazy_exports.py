"""Lazy package exports (PEP 562): a package's public names are imported on first use, not with the package.

Why: the `ringwatch` command imports `ringwatch.stream` (and through it the
connectors, the graph and this runtime) to run one subcommand; importing every
re-exported name eagerly pulled kafka-python, grpc, numba and pyarrow into
`ringwatch --help`. A package calls `lazy_package(__name__)` and lists its
re-exports as imports under `if TYPE_CHECKING:`: that block is the one list of
what comes from where, read here from the package's source (as
`lazy_loader.attach_stub` reads a stub), so type checkers and IDEs see the same
names the package serves at run time. It lives in the runtime, the base layer,
with no import beyond the standard library, so every package can use it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


@functools.cache
def _exports(package: str) -> dict[str, str]:
    """Name -> relative module of each import under the package's top-level `if TYPE_CHECKING:`."""
    module = sys.modules[package]
    tree = ast.parse(module.__spec__.loader.get_source(package) or "")
    exports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    for alias in statement.names:
                        exports[alias.asname or alias.name] = "." * statement.level + (statement.module or "")
    return exports


class _LazyPackage(types.ModuleType):
    """A package module whose exports keep their place when a submodule of the same name is imported.

    The import system binds a submodule on its package once it has run
    (`ringwatch.stream.detect`, the module); where the package exports a name
    of that module (`detect`, the function), the export is bound instead, as
    it was when the package imported everything at once.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and _exports(self.__name__).get(name) == f".{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Callable[[str], types.ModuleType], tuple[str]]:
        """Pickled by name, as pickle and cloudpickle treat a plain module (they look a reducer up by exact type):
        a function shipped to a worker may name a lazy package among its globals."""
        return importlib.import_module, (self.__name__,)


def lazy_package(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's module `__getattr__` and `__dir__`, serving the names of its `if TYPE_CHECKING:` imports."""
    sys.modules[package].__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        source = _exports(package).get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        setattr(sys.modules[package], name, value)  # found once; later look-ups are plain attributes
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(_exports(package)))

    return __getattr__, __dir__
