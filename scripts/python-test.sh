#!/usr/bin/env bash
# Installs the hxq Python package with pip — offline, into a virtual environment of Debian's
# /usr/bin/python3 that sees its numpy and torch — from BUILD_DIR's compiled engine (no second
# build), then runs tests/python with pytest. CTest runs it as PythonPackage.
#   scripts/python-test.sh BUILD_DIR [pytest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:?usage: scripts/python-test.sh BUILD_DIR [pytest arguments]}" && pwd)
shift
VENV=$BUILD/pyenv
PY=${HXQ_SYSTEM_PYTHON:-/usr/bin/python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages --without-pip "$VENV"
HXQ_BUILD_DIR=$BUILD "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps --no-index \
  --force-reinstall "$ROOT/python"
export HXQ_BIN=${HXQ_BIN:-$BUILD/hxq}
export HXQ_TEST_DATA=${HXQ_TEST_DATA:-$(cd "$ROOT/.." && pwd)/shared}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
