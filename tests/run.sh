#!/usr/bin/env bash
# The project's one test command (README.md): on a fresh Debian machine with
# Python 3.11 it installs everything the tests need, then runs the whole suite.
# The `ray` extra is installed too: tests/test_*ray*.py start a real local Ray head.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k kafka -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: redis-server (the GCS tests) and chromium (tests/test_picture.py renders
# rings.html in headless Chromium and measures it).
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
  echo "tests/run.sh: installing Debian packages:$missing" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,ray]'

# Compile the graph kernel once (numba caches it) before tests start processes that would all compile it.
.venv/bin/python -m ringwatch.graph.warmup

# pytest exits 5 when it collects no test: that is a failure here, never a pass.
# --durations lists the slowest tests at the end, so a suite creeping towards CI's 20 minutes shows where.
exec .venv/bin/python -m pytest --durations=15 "$@"
