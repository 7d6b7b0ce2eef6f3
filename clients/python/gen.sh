#!/usr/bin/env bash
# Regenerates src/seaport/v1 from proto/ with a pinned grpcio-tools, in a
# private virtual environment, so the output is the same on every machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv-gen"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check grpcio-tools==1.85.1
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$here/src" --pyi_out="$here/src" --grpc_python_out="$here/src" \
  "$root/proto/seaport/v1/seaport.proto"
