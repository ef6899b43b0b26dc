#!/usr/bin/env bash
# Builds the whole SAM application with `sam build` (cargo-lambda, zig for the Amazon
# Linux glibc) from the project's virtualenv, reusing the workspace's cargo target
# directory, then checks that every function under functions/ got its `bootstrap` and
# prints its size and zipped size. Extra arguments go to `sam build`, e.g.
#   scripts/sam-build.sh --parameter-overrides Architecture=arm64
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="${PUSHDEPLOY_VENV:-$here/.venv}"
build_dir="$here/.aws-sam/build"

for tool in sam cargo-lambda python3; do
  if [ ! -x "$venv/bin/$tool" ]; then
    echo "sam-build: $venv/bin/$tool is missing; run \`make setup\` (scripts/bootstrap.sh) first" >&2
    exit 1
  fi
done
command -v cargo >/dev/null 2>&1 || {
  echo "sam-build: cargo is not on PATH; install Rust (https://rustup.rs)" >&2
  exit 1
}

# sam finds cargo-lambda on PATH, and cargo-lambda finds zig in the venv's ziglang wheel.
export PATH="$venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# Every function builds into the one workspace target directory, so the SDK crates
# compile once for all five (and stay there for the next build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"

cd "$here"
started=$SECONDS
sam build --template-file template.yaml --build-dir "$build_dir" "$@"
echo "sam-build: built in $((SECONDS - started)) s"

# What a function's deployment package weighs: its bootstrap, deflated as `sam deploy` zips it.
zipped_size() {
  "$venv/bin/python3" - "$1" <<'EOF'
import io, sys, zipfile
buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.write(sys.argv[1], "bootstrap")
print(len(buffer.getvalue()))
EOF
}

missing=0
printf '%-20s %12s %12s\n' function bootstrap zipped
for dir in functions/*/; do
  name=$(basename "$dir")
  logical_id="${name^}Function"
  bootstrap="$build_dir/$logical_id/bootstrap"
  if [ ! -x "$bootstrap" ]; then
    echo "sam-build: $logical_id produced no bootstrap (expected $bootstrap)" >&2
    missing=1
    continue
  fi
  printf '%-20s %12s %12s\n' "$logical_id" "$(stat -c %s "$bootstrap")" "$(zipped_size "$bootstrap")"
done
exit "$missing"
