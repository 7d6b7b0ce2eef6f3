#!/usr/bin/env bash
# Downloads the Go modules and runs the tests against a real seaportd
# (built here if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ -x "$root/target/debug/seaportd" ] && [ -x "$root/target/debug/seaportctl" ] \
  || (cd "$root" && cargo build --quiet --bin seaportd --bin seaportctl)
cd "$here"
go mod download
test -z "$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
go vet ./...
go test -count=1 -v ./...
