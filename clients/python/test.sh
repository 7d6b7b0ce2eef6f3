#!/usr/bin/env bash
# Installs the package and pytest in a private virtual environment and runs
# the tests against a real seaportd: $SEAPORTD and $SEAPORTCTL when set,
# else target/debug's (built here if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${SEAPORTD:-}" ] || [ -z "${SEAPORTCTL:-}" ]; then
  [ -x "$root/target/debug/seaportd" ] && [ -x "$root/target/debug/seaportctl" ] \
    || (cd "$root" && cargo build --quiet --bin seaportd --bin seaportctl)
fi
venv="$here/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
cd "$here"
"$venv/bin/python" -m pytest -q tests
