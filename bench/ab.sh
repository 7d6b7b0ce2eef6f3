#!/usr/bin/env bash
# Before and after: two seaportd builds, measured in alternating runs of
# the register+free row, then each one's figures side by side. The host
# moves a single run by several percent, so only runs interleaved in one
# batch compare; docs/PERFORMANCE.md's before/after figures are made so.
#   RUNS=4 DURATION=10s SESSIONS=1000 bench/ab.sh path/to/seaportd-before path/to/seaportd-after
# A build is any executable taking seaportd's flags: a wrapper script that
# adds some (`exec seaportd "$@" --history 0`) measures a setting.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
for build in "$@"; do
  [ -x "$build" ] || { echo "ab.sh: $build is not an executable seaportd" >&2; exit 2; }
done
runs=${RUNS:-4}
duration=${DURATION:-10s}
sessions=${SESSIONS:-1000}
. bench/release.sh
bench=${SEAPORT_BENCH:-$release/seaport-bench}
[ -n "${SEAPORT_BENCH:-}" ] || ensure_release seaport-bench

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for run in $(seq "$runs"); do
  for side in 1 2; do
    build=${!side}
    echo "run $run of $runs: $build" >&2
    SEAPORTD=$build "$bench" --sessions "$sessions" --duration "$duration" --sizes \
      --watchers --get-rounds 0 --idle-sessions 0 \
      --out "$work/$side-$run.json" >/dev/null
  done
done

python3 - "$work" "$runs" "$1" "$2" <<'PY'
import json, statistics, sys
work, runs, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("register+free, interleaved runs: ratio to the health check, both rates, and CPU per RPC above a health check's")
for side, build in enumerate(builds, 1):
    ratio, server, bench, rate, health = [], [], [], [], []
    for run in range(1, runs + 1):
        rows = json.load(open(f"{work}/{side}-{run}.json"))["rows"]
        row = next(r for r in rows if r["scenario"].startswith("register+free"))
        ratio.append(row["rate_vs_health"])
        rate.append(row["rate_per_s"] / 1000)
        health.append(row["health_rate_per_s"] / 1000)
        server.append(row["server_cpu_us_per_op"] - row["server_cpu_us_per_health_check"])
        bench.append(row["bench_cpu_us_per_op"] - row["bench_cpu_us_per_health_check"])
    print(f"{build}")
    for label, xs, digits in [("ratio", ratio, 3), ("k/s", rate, 1), ("health k/s", health, 1),
                              ("server µs", server, 2), ("bench µs", bench, 2)]:
        print(f"  {label:<10} {' '.join(f'{x:.{digits}f}' for x in xs)}  mean {statistics.mean(xs):.{digits}f}")
PY
