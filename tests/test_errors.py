"""Every exception class ringwatch defines derives from one root, `RingwatchError`.

A caller can catch everything the product raises with one clause, and nothing
else; each class also keeps the built-in base its callers already catch
(`ValueError` for bad input, `RuntimeError` for failures, `ConnectionError`).
The modules are found by walking the four packages, so a new error class that
forgets the root fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import pytest

from ringwatch.runtime import RingwatchError
from ringwatch.stream.config import load

PACKAGES = ("ringwatch.runtime", "ringwatch.graph", "ringwatch.connectors", "ringwatch.stream")


def ringwatch_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if info.name.startswith("ringwatch.runtime.ray_backend") and importlib.util.find_spec("ray") is None:
                continue  # the optional extra is not installed
            if info.name.endswith("__main__"):
                continue  # running it is the command, not an import
            names.append(info.name)
    return names


def defined_exceptions() -> list[type[BaseException]]:
    found = {}
    for name in ringwatch_modules():
        for _, value in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("ringwatch."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


def test_the_walk_finds_the_errors_of_every_package() -> None:
    modules = {cls.__module__.split(".")[1] for cls in defined_exceptions()}
    assert modules == {"runtime", "graph", "connectors", "stream"}


@pytest.mark.parametrize("cls", defined_exceptions(), ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_error_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, RingwatchError)


def test_the_root_is_exported_where_users_import_from() -> None:
    from ringwatch.stream import ConfigError, RingwatchError as from_stream

    assert from_stream is RingwatchError
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(RingwatchError, match="RINGWATCH_SHARDS"):
        load(environ={"RINGWATCH_SHARDS": "many"}, validate=False)
