#!/usr/bin/env bash
# Seaport on etcd, in one run on one etcd cluster: register+free through a
# seaportd on the etcd store at 1, 10 and 100 sessions against bench/etcd's
# raw lease grant + put at as many writers; then query, get wake-up and
# watch fan-out on the etcd store against the memory store; and the time
# for 100 sessions to be resumed by another seaportd after a kill -9 of
# theirs.
# Needs etcd (Debian's etcd-server) and a release seaportd built with the
# etcd feature (bench/release.sh builds one when protoc is there).
# Figures only.
#   DURATION=5s MEMBERS=3 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-5s}
members=${MEMBERS:-3}
. bench/release.sh
ensure_release seaportd seaport-bench seaportctl
bench=$release/seaport-bench
seaportd=$release/seaportd

work=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cluster=
endpoints=
for i in $(seq 0 $((members - 1))); do
  client[i]=$(free_port)
  peer[i]=$(free_port)
  cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer[i]}"
  endpoints+="${endpoints:+,}http://127.0.0.1:${client[i]}"
done
for i in $(seq 0 $((members - 1))); do
  etcd --name "m$i" --data-dir "$work/m$i" \
    --listen-client-urls "http://127.0.0.1:${client[i]}" --advertise-client-urls "http://127.0.0.1:${client[i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[i]}" \
    --initial-cluster "$cluster" --initial-cluster-token "bench-$$" >"$work/m$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:${client[0]}/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
done
echo "etcd $(etcd --version | head -1 | awk '{print $3}'), $members members on 127.0.0.1" >&2

# Raw etcd: a lease and a put per registration, as many writers as sessions.
for n in 1 10 100; do
  (cd bench/etcd && go run . -endpoint "127.0.0.1:${client[0]}" -duration "$duration" \
    -sessions "$n" -register-only) >"$work/etcd-$n.json"
done

common=(--duration "$duration" --sizes 1000,10000 --get-rounds 100 --watchers 100,1000 --idle-sessions 0)
SEAPORTD=$seaportd "$bench" "${common[@]}" --sessions 1,10,100 \
  --seaportd-arg=--store --seaportd-arg=etcd --seaportd-arg=--etcd-endpoints --seaportd-arg="$endpoints" \
  --seaportd-arg=--etcd-prefix --seaportd-arg="/bench-$$" \
  --out "$work/on-etcd.json" >/dev/null
SEAPORTD=$seaportd "$bench" "${common[@]}" --sessions 1,10,100 --out "$work/in-memory.json" >/dev/null

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def rows(name):
    return {r["scenario"]: r for r in json.load(open(f"{work}/{name}.json"))["rows"]}
etcd_store, memory = rows("on-etcd"), rows("in-memory")
def find(table, prefix):
    return next(r for name, r in table.items() if name.startswith(prefix))
print(f"{'writes (seaport on etcd vs raw lease grant + put)':58} {'seaport':>10} {'raw etcd':>10} {'ratio':>7}")
for shape in ("register+free", "register"):
    for n in (1, 10, 100):
        s = find(etcd_store, f"{shape}, {n} session")
        raw = json.load(open(f"{work}/etcd-{n}.json"))[0]
        print(f"{f'  {shape}, {n} sessions / writers':58} {s['rate_per_s']:>8.0f}/s {raw['rate_per_s']:>8.0f}/s {s['rate_per_s'] / raw['rate_per_s']:>6.2f}x")
print()
print(f"{'read side (etcd store vs memory store)':58} {'on etcd':>10} {'memory':>10} {'ratio':>7}")
for name, e in etcd_store.items():
    if not name.startswith(("query", "get wake-up", "watch fan-out")) or name not in memory:
        continue
    m = memory[name]
    if e.get("rate_per_s"):
        print(f"{'  ' + name:58} {e['rate_per_s']:>8.0f}/s {m['rate_per_s']:>8.0f}/s {e['rate_per_s'] / m['rate_per_s']:>6.2f}x")
    else:
        print(f"{'  ' + name + ' (p50)':58} {e['p50_us'] / 1000:>8.2f}ms {m['p50_us'] / 1000:>8.2f}ms {e['p50_us'] / max(m['p50_us'], 1):>6.2f}x")
print()
f = find(etcd_store, "failover")
print(f"{f['scenario'] + ': kill -9 -> resumed on another seaportd':58} p50 {f['p50_us'] / 1000:.1f} ms, p99 {f['p99_us'] / 1000:.1f} ms")
PY
