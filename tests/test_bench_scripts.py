"""Every benchmark script still starts: its imports resolve and its arguments parse (`--help`).

The benchmarks are not run by the suite (they measure, they do not assert), so a
module split elsewhere could break one silently until someone needs its figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bench").rglob("*.py"))


def test_there_are_scripts_to_check() -> None:
    assert "bench/ring_search.py" in SCRIPTS and "bench/device/e2e_scale_out.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
