#!/usr/bin/env bash
# The web console's tests in a real browser: headless Chromium driven by
# selenium, against real seaportd and seaportctl ($SEAPORTD and
# $SEAPORTCTL when set, else cargo's debug builds, built here if missing).
# Installs Debian's chromium and chromium-driver when missing (root, or
# sudo; one test also writes a Chromium policy under /etc/chromium, so that
# the browser presents an admin's certificate), and selenium and pytest in a private virtual environment under
# the target directory. Screenshots go to $CONSOLE_SCREENSHOTS (default:
# the target directory's console-screenshots/).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac

if [ -z "${SEAPORTD:-}" ] || [ -z "${SEAPORTCTL:-}" ]; then
  # With protoc, the etcd store too, as scripts/test's other suites build
  # seaportd, so that the binary is not built twice.
  features=()
  command -v protoc >/dev/null 2>&1 && features=(--features seaport-server/etcd)
  (cd "$root" && cargo build --quiet "${features[@]}" --bin seaportd --bin seaportctl)
  export SEAPORTD=$target/debug/seaportd SEAPORTCTL=$target/debug/seaportctl
fi

# certutil, pk12util and openssl put an admin's certificate in the
# browser's NSS database.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 ||
  ! command -v pk12util >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "installing Debian's chromium, chromium-driver, libnss3-tools and openssl (for the console's browser tests)" >&2
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver libnss3-tools openssl >/dev/null
fi

venv=$target/console-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'selenium>=4.11,<5' 'pytest>=7'

export CONSOLE_SCREENSHOTS=${CONSOLE_SCREENSHOTS:-$target/console-screenshots}
mkdir -p "$CONSOLE_SCREENSHOTS"
# Selenium finds the driver and browser named in the test; never fetch one.
export SE_OFFLINE=true SE_AVOID_STATS=true
cd "$here"
"$venv/bin/python" -m pytest -q -p no:cacheprovider test_console.py "$@"
