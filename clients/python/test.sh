#!/usr/bin/env bash
# Installs the package and pytest in a private virtual environment and runs
# the tests against a real seaportd (built here if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ -x "$root/target/debug/seaportd" ] && [ -x "$root/target/debug/seaportctl" ] \
  || (cd "$root" && cargo build --quiet --bin seaportd --bin seaportctl)
venv="$here/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
cd "$here"
"$venv/bin/python" -m pytest -q tests
