#!/usr/bin/env bash
# Fetches the Maven dependencies, generates the stubs from proto/ and runs
# the tests against a real seaportd (the Maven build runs cargo for it when
# target/debug/seaportd is missing).
set -euo pipefail
cd "$(dirname "$0")"
mvn -B --no-transfer-progress test
