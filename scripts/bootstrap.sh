#!/usr/bin/env bash
# Installs everything the demo and the test suite need, idempotently: Debian packages for
# the container host and the script checks, and a Python venv with the AWS emulator and the
# SAM/CloudFormation tooling. Safe to run repeatedly; does nothing when all is present.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="${PUSHDEPLOY_VENV:-$here/.venv}"

debian_packages=(podman runc docker-registry shellcheck bats busybox-static jq curl valgrind)
# python packages, pinned so a release cannot break the suite overnight
python_packages=(
  "moto[server]==5.2.6"
  "cargo-lambda==1.9.2"
  "aws-sam-cli==1.170.0"
  "awscli==1.46.3"
  "ziglang==0.13.0"
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The test runner; machines usually have it, a bare toolchain does not.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "bootstrap: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

stamp="$venv/.pushdeploy-stamp"
wanted=$(printf '%s\n' "${python_packages[@]}")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "bootstrap: installing Python tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "${python_packages[@]}"
  printf '%s' "$wanted" > "$stamp"
fi
