#!/usr/bin/env bash
# Installs the Debian packages hxq needs to build and test (idempotent; safe to re-run).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config nlohmann-json3-dev libcli11-dev libfmt-dev
      libpcre2-dev libicu-dev libgtest-dev libbenchmark-dev libsentencepiece-dev
      libcpp-httplib-dev python3-jinja2 python3-requests python3-pytest
      pybind11-dev python3-dev python3-pip python3-setuptools python3-wheel python3-numpy python3-torch)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "hxq build dependencies installed"
