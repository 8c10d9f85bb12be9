#!/usr/bin/env bash
# Run HERE, after prepare.sh: the device run in miniature (SMOKE=1), as the device would run it, in about
# 5 minutes on the 2-core box (a first run adds a minute for its venv):
#   bash bench/device/rehearse.sh [runtime] [ring] [e2e]
# - Python 3.12 (the device has 3.12.3; pyenv has one here) in a venv holding only those of the device
#   image's packages that matter here (KINDS.md), none of the project's others: they come from .whl;
# - a copy of what travels: tracked and untracked-not-ignored files, .whl and .devbin;
# - a PATH without redis-server (the device has none: run.sh must bring its own);
# - OUT and run.sh's work folder under $SCRATCH (default /tmp/rw-rehearsal).
# It catches a bench flag that changed, a wheel that is missing, a part that no longer starts.
set -euo pipefail

ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
SCRATCH=${SCRATCH:-/tmp/rw-rehearsal}
PY312=${PY312:-$(ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || true)}
PY312=${PY312:-python3.12}
if ! "$PY312" -V >/dev/null 2>&1; then
  echo "rehearse.sh: no Python 3.12 here: set PY312" >&2
  exit 1
fi
if [ ! -d .whl ] || [ ! -f .devbin/redis.tar.xz ]; then
  echo "rehearse.sh: run bench/device/prepare.sh first" >&2
  exit 1
fi

if [ ! -x "$SCRATCH/venv/bin/python3" ]; then
  "$PY312" -m venv "$SCRATCH/venv"
  "$SCRATCH/venv/bin/pip" install -q numpy pyarrow grpcio cloudpickle networkx numba llvmlite msgpack protobuf \
    pyyaml requests click filelock packaging psutil prometheus-client urllib3 attrs typing-extensions aiohttp \
    idna certifi 2>&1 | grep -v 'is ignored' || true
fi

rm -rf "$SCRATCH/tree" "$SCRATCH/out" "$SCRATCH/bin"
mkdir -p "$SCRATCH/tree" "$SCRATCH/out" "$SCRATCH/bin"
{ git ls-files -z; git ls-files -z --others --exclude-standard; } \
  | tar --null --ignore-failed-read -cf - -T - .whl .devbin | tar -C "$SCRATCH/tree" -xf -

# Every command on this PATH but redis-server and its kin.
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
  for command in "$dir"/*; do
    name=$(basename "$command")
    case $name in redis-*) continue ;; esac
    [ -e "$SCRATCH/bin/$name" ] || ln -s "$command" "$SCRATCH/bin/$name"
  done
done

cd "$SCRATCH/tree"
env -i HOME="$HOME" TERM=dumb PATH="$SCRATCH/venv/bin:$SCRATCH/bin" OUT="$SCRATCH/out" \
  RW_DEVICE_WORK="$SCRATCH/work" SMOKE=1 bash bench/device/run.sh "$@"
