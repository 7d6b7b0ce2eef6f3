#!/usr/bin/env bash
# Side by side with etcd: the same load shapes against a single local etcd
# and a local seaportd, then both figures and their ratio in one table.
# Installs etcd from Debian's packages when missing (root). Runs the release
# seaportd and seaport-bench as built, building them only when missing or
# stale (bench/release.sh), or the ones SEAPORT_BENCH and SEAPORTD name.
# Figures only.
#   DURATION=5s SESSIONS=100 KEYS=1000 WATCHERS=1000 ETCD_FLAGS=--unsafe-no-fsync bench/etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-5s}
sessions=${SESSIONS:-100}
keys=${KEYS:-1000}
watchers=${WATCHERS:-1000}
. bench/release.sh
bench=${SEAPORT_BENCH:-$release/seaport-bench}
seaportd=${SEAPORTD:-$(dirname "$bench")/seaportd}

if ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd-server from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
[ -n "${SEAPORT_BENCH:-}" ] || ensure_release seaportd seaport-bench

work=$(mktemp -d)
etcd_pid=
# Every way out stops etcd and removes its data; the script's own status
# stands, not the stopped etcd's (143), whatever errexit makes of `wait`.
cleanup() {
  local status=$?
  if [ -n "$etcd_pid" ]; then
    kill "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port=$(free_port)
peer_port=$(free_port)
# shellcheck disable=SC2086
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" ${ETCD_FLAGS:-} >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$client_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "etcd $(etcd --version | head -1 | awk '{print $3}') on 127.0.0.1:$client_port" >&2
(cd bench/etcd && go run . -endpoint "127.0.0.1:$client_port" -duration "$duration" \
  -sessions "$sessions" -keys "$keys" -watchers "$watchers") >"$work/etcd.json"

SEAPORTD=$seaportd "$bench" --duration "$duration" --sessions "$sessions" --sizes "$keys" \
  --watchers "$watchers" --get-rounds 0 --idle-sessions 0 --out "$work/seaport.json" >/dev/null

python3 - "$work/seaport.json" "$work/etcd.json" <<'PY'
import json, sys
seaport = {r["scenario"]: r for r in json.load(open(sys.argv[1]))["rows"]}
etcd = json.load(open(sys.argv[2]))
def find(prefix):
    return next(r for name, r in seaport.items() if name.startswith(prefix))
pairs = [
    ("registration (seaport register; etcd lease grant + put)", find("register,"), etcd[0], "rate"),
    ("query hit (seaport query; etcd prefix range)", find("query hit"), etcd[1], "rate"),
    ("query miss", find("query miss"), etcd[2], "rate"),
    ("watch fan-out: ms until all watchers have one change", find("watch fan-out"), etcd[3], "fanout"),
]
print(f"{'operation':58} {'seaport':>12} {'etcd':>12} {'seaport/etcd':>13}")
for name, s, e, kind in pairs:
    if kind == "rate":
        sv, ev = s["rate_per_s"], e["rate_per_s"]
        print(f"{name:58} {sv:>10.0f}/s {ev:>10.0f}/s {sv / ev:>12.1f}x")
    else:
        # Both put their worst round in p99: of 5 rounds for seaport, 3 for etcd.
        sv, ev = s["p99_us"] / 1000, e["p99_us"] / 1000
        print(f"{name:58} {sv:>10.1f}ms {ev:>10.1f}ms {ev / sv:>12.1f}x faster")
PY
