"""Every exception class ringwatch defines derives from one root, `RingwatchError`.

A caller can catch everything the product raises with one clause, and nothing
else; each class also keeps the built-in base its callers already catch
(`ValueError` for bad input, `RuntimeError` for failures, `ConnectionError`).
The modules are found by walking the four packages, so a new error class that
forgets the root fails here. The walk runs in a fresh interpreter: importing
every module (Ray's among them) into the test process would fix Ray's settings
before the Ray tests set their authentication environment.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ringwatch.runtime import RingwatchError
from ringwatch.stream.config import load

WALK = """
import importlib, importlib.util, inspect, json, pkgutil
from ringwatch.runtime import RingwatchError
found = {}
for package in ("ringwatch.runtime", "ringwatch.graph", "ringwatch.connectors", "ringwatch.stream"):
    names = [package] + [info.name for info in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                                                     prefix=package + ".")]
    for name in names:
        if name.endswith("__main__"):
            continue  # running it is the command, not an import
        if name.startswith("ringwatch.runtime.ray_backend") and importlib.util.find_spec("ray") is None:
            continue  # the optional extra is not installed
        for _, value in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("ringwatch."):
                found[value.__module__ + "." + value.__qualname__] = issubclass(value, RingwatchError)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def defined_errors() -> dict[str, bool]:
    """Each exception class of the four packages, by dotted name: whether it derives from the root."""
    done = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_walk_finds_the_errors_of_every_package(defined_errors: dict[str, bool]) -> None:
    assert {name.split(".")[1] for name in defined_errors} == {"runtime", "graph", "connectors", "stream"}
    assert "ringwatch.stream.config.ConfigError" in defined_errors


def test_every_error_derives_from_the_root(defined_errors: dict[str, bool]) -> None:
    assert sorted(name for name, rooted in defined_errors.items() if not rooted) == []


def test_the_root_is_exported_where_users_import_from() -> None:
    from ringwatch.stream import ConfigError, RingwatchError as from_stream

    assert from_stream is RingwatchError
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(RingwatchError, match="RINGWATCH_SHARDS"):
        load(environ={"RINGWATCH_SHARDS": "many"}, validate=False)
