"""What the `ringwatch` command imports: only what the chosen subcommand needs.

`--help` and an argument error import no Kafka client, no gRPC, no numba, no
numpy and no pyarrow; `detect` searches a file without Kafka, gRPC or the runtime. Each
check runs in a fresh interpreter, since this test process has imported
everything already. The packages' public names, imported on first use
(runtime/lazy_exports.py), all resolve.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("kafka", "grpc", "numba", "numpy", "pyarrow", "redis", "networkx", "ringwatch.runtime.api")
PACKAGES = ("ringwatch.runtime", "ringwatch.graph", "ringwatch.connectors", "ringwatch.stream")


def imported_after(code: str) -> set[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = (f"import json, sys\n{code}\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_none_of_the_engine() -> None:
    assert imported_after("from ringwatch.stream.cli import build_parser\nbuild_parser().format_help()") == set()


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["detect", "--no-such-flag"], ["run", "--help"],
                                  ["query", "alerts", "--help"], ["generate", "--mode", "nope"]])
def test_argument_parsing_imports_none_of_the_engine(argv: list[str]) -> None:
    code = ("from contextlib import redirect_stdout, redirect_stderr\nimport io\n"
            "from ringwatch.stream.cli import main\n"
            "with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")
    assert imported_after(code) == set()


def test_detect_runs_without_kafka_grpc_or_the_runtime(tmp_path: Path) -> None:
    payments = tmp_path / "two.jsonl"
    payments.write_text('{"tx_id":"t1","src":"a","dst":"b","amount":"10.00","ts":1700000000000}\n'
                        '{"tx_id":"t2","src":"b","dst":"a","amount":"9.00","ts":1700000001000}\n')
    out = tmp_path / "alerts.jsonl"
    held = imported_after(f"from ringwatch.stream.cli import main\nassert main(['detect', {str(payments)!r}, "
                          f"'--out', {str(out)!r}]) == 0")
    assert held & {"kafka", "grpc", "redis", "ringwatch.runtime.api"} == set()
    assert [json.loads(line)["tx_ids"] for line in out.read_text().splitlines()] == [["t1", "t2"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(module, "no_such_name")


def test_a_submodule_import_keeps_the_export_of_its_name() -> None:
    """`ringwatch.stream.detect` is a module and `ringwatch.stream`'s `detect` a function: the function stays."""
    code = ("import ringwatch.stream.detect\nfrom ringwatch.stream import detect\n"
            "assert callable(detect) and not hasattr(detect, '__path__') and detect.__module__ == "
            "'ringwatch.stream.detect', detect")
    imported_after(code)


def test_a_function_naming_a_lazy_package_pickles_by_reference():
    """Tasks shipped by value (cloudpickle) name packages such as `ringwatch.runtime` among their globals."""
    import cloudpickle
    import pickle

    import ringwatch.runtime as rt

    def uses_the_package() -> object:
        return rt

    assert pickle.loads(pickle.dumps(rt)) is rt
    assert pickle.loads(cloudpickle.dumps(uses_the_package))() is rt



def progress_lines_of_a_load(placement: str, notice_after_s: float) -> str:
    """What `load_compiled_code` writes on the progress log in a fresh interpreter."""
    code = ("import io, json, logging\nlog = io.StringIO()\nprogress = logging.getLogger('ringwatch.progress')\n"
            "progress.addHandler(logging.StreamHandler(log))\nprogress.setLevel(logging.INFO)\n"
            "from ringwatch.graph.warmup import load_compiled_code\n"
            f"load_compiled_code({placement!r}, notice_after_s={notice_after_s!r})\nprint(json.dumps(log.getvalue()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("placement", ["actors", "in-process"])
def test_a_slow_kernel_load_says_so_and_a_quick_one_says_nothing(placement: str) -> None:
    """A first start compiles for a minute: the commands load the kernel before any worker starts, and a
    load that takes longer than `notice_after_s` (here 0: every load) says so on the progress log."""
    assert progress_lines_of_a_load(placement, 600) == ""
    noticed = progress_lines_of_a_load(placement, 0)
    assert noticed.startswith("compiling the ring-search kernel (first start after an install or upgrade")
    assert "ring-search kernel compiled in" in noticed
