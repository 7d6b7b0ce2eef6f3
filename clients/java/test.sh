#!/usr/bin/env bash
# Fetches the Maven dependencies, generates the stubs from proto/ and runs
# the tests against a real seaportd (built here if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ -x "$root/target/debug/seaportd" ] && [ -x "$root/target/debug/seaportctl" ] \
  || (cd "$root" && cargo build --quiet --bin seaportd --bin seaportctl)
cd "$here"
mvn -B --no-transfer-progress test
