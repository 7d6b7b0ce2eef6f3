#!/usr/bin/env bash
# The registry's cache misses per register+free pair, counted by cachegrind
# in a simulated 1 MiB cache (a common size of one core's L2) while 1000
# sessions take turns (server/examples/registry_misses.rs says how). A
# count, not a time: it does not move with the host's load, so it tells two
# builds apart where the bench's ratio cannot. Installs valgrind from
# Debian's packages when missing (root). Environment: OPS (default 4000),
# HISTORY, QUARANTINE_MS, TOP.
set -euo pipefail
cd "$(dirname "$0")/.."

ops=${OPS:-4000}
if ! command -v valgrind >/dev/null 2>&1; then
  echo "installing valgrind from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

# Debug info and v0 symbols name the function each miss is in, inlined
# generics included; a target dir of its own keeps these flags apart.
misses=${CARGO_TARGET_DIR:-target}/misses
CARGO_PROFILE_RELEASE_DEBUG=2 RUSTFLAGS="-C symbol-mangling-version=v0" \
  cargo build --release --quiet -p seaport-server --example registry_misses --target-dir "$misses"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Two runs differing only in the counted operations: the difference leaves
# out start-up and warm-up.
for n in "$ops" $((3 * ops)); do
  valgrind --tool=cachegrind --cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64 \
    --cachegrind-out-file="$work/$n" "$misses/release/examples/registry_misses" "$n" \
    >/dev/null 2>"$work/$n.log" || { cat "$work/$n.log" >&2; exit 1; }
done
cg_diff "$work/$ops" "$work/$((3 * ops))" >"$work/diff"
cg_annotate --show=DLmr,DLmw --sort=DLmr --threshold=0 --auto=no "$work/diff" >"$work/annotated"

python3 - "$work/annotated" "$ops" "${TOP:-15}" <<'PY'
import collections, re, sys
path, pairs, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Where a function's misses belong; the first pattern that matches wins.
GROUPS = [
    ("ports and quarantine", r"registry::ports::"),
    ("sessions", r"registry::sessions::|session_of"),
    ("services by id", r"registry::by_id::|registry::authorize"),
    ("names (index)", r"registry::index::|btree"),
    ("history: changes and the services they free",
     r"publish|watch::Change|Service>>::drop_slow|semver"),
    ("allocator", r"\bmi_|_mi_|malloc|dealloc"),
    ("key compares, hashing and copies (any table)", r"memcmp|memcpy|memmove|foldhash"),
]
by_function, by_group = collections.Counter(), collections.Counter()
line = re.compile(r"\s*(-?[\d,]+) \([^)]*\)\s+(-?[\d,]+)(?: \([^)]*\))?\s+(\S.*)$")
for text in open(path):
    m = line.match(text)
    if not m or m.group(3) == "PROGRAM TOTALS" or "registry_misses.rs" in m.group(3):
        continue
    misses = int(m.group(1).replace(",", "")) + int(m.group(2).replace(",", ""))
    function = m.group(3).split(":", 1)[-1]
    by_function[function] += misses
    group = next((g for g, p in GROUPS if re.search(p, function)), "other registry code")
    by_group[group] += misses
total = sum(by_function.values())
if total <= 0:
    sys.exit("misses.sh: found no registry misses in cachegrind's output")
print(f"cache misses (1 MiB, 64-byte lines) per register+free pair: {total / pairs:.1f}")
for group, misses in by_group.most_common():
    print(f"  {misses / pairs:6.1f}  {group}")
print(f"the {top} functions with most:")
for function, misses in by_function.most_common(top):
    print(f"  {misses / pairs:6.1f}  {function[:150]}")
PY
