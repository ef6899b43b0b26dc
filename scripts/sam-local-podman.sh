#!/usr/bin/env bash
# `sam local invoke` and `sam local start-lambda` on podman, where no Docker engine runs and
# AWS's Lambda base image cannot be pulled.
#
#   scripts/sam-local-podman.sh start [DIR]   starts podman's Docker-compatible API on
#                                             DIR/podman.sock (default /tmp/pushdeploy-podman),
#                                             builds the stand-in image if it is missing, and
#                                             prints the `export DOCKER_HOST=…` line to eval
#   scripts/sam-local-podman.sh stop [DIR]    stops that service
#   scripts/sam-local-podman.sh image         builds the stand-in image only (podman's storage)
#
# The stand-in image, localhost/pushdeploy-standin-lambda-provided:al2023, stands in for
# AWS's public.ecr.aws/lambda/provided:al2023: it is NOT that image. It is made here, from
# this machine's files, with `podman import`: glibc's loader and the libraries a Rust
# `bootstrap` links (and its name-service modules), a busybox /bin/sh (SAM's image build runs `mv` and `chmod` in it), CA
# certificates and the directories Lambda has. SAM adds its own Runtime Interface Emulator
# and runs the function's `bootstrap` in it, as it does on AWS's image. It is rebuilt only
# when this script changes (the script's hash is the image's label).
#
# podman runs with runc and cgroupfs and with lowered rlimits (runc cannot raise
# RLIMIT_NOFILE on some machines), from a containers.conf of its own in DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
image="localhost/pushdeploy-standin-lambda-provided:al2023"
busybox=/bin/busybox
flags=(--cgroup-manager cgroupfs --runtime runc)

die() {
  echo "sam-local-podman: $*" >&2
  exit 1
}

command -v podman >/dev/null 2>&1 || die "podman is not installed (Debian package podman; run \`make setup\`)"

script_hash() {
  sha256sum "$here/scripts/sam-local-podman.sh" | cut -c1-16
}

# The libraries a glibc-linked Rust binary needs, from this machine's loader directory.
library_dir() {
  case "$(uname -m)" in
    x86_64) echo /lib/x86_64-linux-gnu ;;
    aarch64) echo /lib/aarch64-linux-gnu ;;
    *) die "no stand-in image for $(uname -m): use Docker with AWS's image instead" ;;
  esac
}

loader_name() {
  case "$(uname -m)" in
    x86_64) echo ld-linux-x86-64.so.2 ;;
    aarch64) echo ld-linux-aarch64.so.1 ;;
  esac
}

build_image() {
  local wanted
  wanted=$(script_hash)
  # One build at a time: two callers at once would otherwise both import, and one would
  # remove the derived image the other's SAM is using.
  exec 9>"${TMPDIR:-/tmp}/pushdeploy-standin.lock"
  flock 9
  if podman "${flags[@]}" image exists "$image" 2>/dev/null; then
    local have
    have=$(podman "${flags[@]}" image inspect --format '{{index .Labels "io.pushdeploy.standin.script"}}' "$image" 2>/dev/null || true)
    if [ "$have" = "$wanted" ]; then
      echo "sam-local-podman: $image is up to date" >&2
      exec 9>&-
      return 0
    fi
  fi
  [ -x "$busybox" ] || die "$busybox is missing (Debian package busybox-static; run \`make setup\`)"
  local root libs loader
  root=$(mktemp -d)
  libs=$(library_dir)
  loader=$(loader_name)
  mkdir -p "$root$libs" "$root/bin" "$root/etc/ssl/certs" "$root/etc/pki/tls/certs" \
    "$root/tmp" "$root/var/task" "$root/var/runtime" "$root/var/rapid" "$root/opt" "$root/lib64"
  chmod 1777 "$root/tmp"
  for lib in "$loader" libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 \
    libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    [ -e "$libs/$lib" ] || die "$libs/$lib is missing on this machine"
    cp -L "$libs/$lib" "$root$libs/$lib"
  done
  ln -s "$libs/$loader" "$root/lib64/$loader"
  [ "$(uname -m)" = aarch64 ] && ln -s "$libs/$loader" "$root/lib/$loader"
  cp "$busybox" "$root/bin/busybox"
  for applet in sh mv chmod cp rm ls cat mkdir env; do
    ln -s busybox "$root/bin/$applet"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" 2>/dev/null ||
    die "/etc/ssl/certs/ca-certificates.crt is missing (Debian package ca-certificates)"
  cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/pki/tls/certs/ca-bundle.crt"
  printf 'root:x:0:0:root:/root:/bin/sh\nsbx_user1051:x:993:990::/home/sbx_user1051:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nsbx_user1051:x:990:\n' >"$root/etc/group"
  # Name lookups (an emulator's host name) through /etc/hosts, then DNS, as on Amazon Linux.
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  # SAM derives `<image>:rapid-<arch>` from the base once and reuses it: a new base needs
  # those removed, or SAM keeps running the old one.
  podman "${flags[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep -F "${image%%:*}:rapid-" |
    xargs -r podman "${flags[@]}" rmi --force >/dev/null 2>&1 || true
  echo "sam-local-podman: building $image (a stand-in for public.ecr.aws/lambda/provided:al2023)" >&2
  tar -C "$root" -cf - . | podman "${flags[@]}" import --quiet \
    --change 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin' \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
    --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'WORKDIR /var/task' \
    --change "LABEL io.pushdeploy.standin.script=$wanted" \
    --change 'LABEL io.pushdeploy.standin.for=public.ecr.aws/lambda/provided:al2023' \
    --change 'LABEL org.opencontainers.image.description=pushdeploy-made stand-in for the Lambda provided:al2023 base image (not AWS image)' \
    - "$image" >/dev/null
  rm -rf "$root"
  echo "sam-local-podman: built $image" >&2
  exec 9>&-
}

write_conf() {
  local dir=$1
  mkdir -p "$dir/tmp"
  cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "$dir/podman-events.log"
EOF
}

answers() {
  curl -sf --max-time 2 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

start() {
  local dir=${1:-/tmp/pushdeploy-podman}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local socket="$dir/podman.sock"
  write_conf "$dir"
  export CONTAINERS_CONF="$dir/containers.conf"
  if ! answers "$socket"; then
    rm -f "$socket"
    nohup podman "${flags[@]}" system service --time 0 "unix://$socket" \
      >"$dir/service.log" 2>&1 </dev/null &
    echo $! >"$dir/service.pid"
    for _ in $(seq 100); do
      answers "$socket" && break
      sleep 0.1
    done
    answers "$socket" || die "podman system service did not answer on $socket; see $dir/service.log"
    echo "sam-local-podman: podman's Docker API listens on $socket (log: $dir/service.log)" >&2
  fi
  build_image
  echo "export DOCKER_HOST=unix://$socket"
}

stop() {
  local dir=${1:-/tmp/pushdeploy-podman}
  if [ -f "$dir/service.pid" ]; then
    kill "$(cat "$dir/service.pid")" 2>/dev/null || true
    rm -f "$dir/service.pid" "$dir/podman.sock"
    echo "sam-local-podman: stopped the service of $dir" >&2
  fi
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-/tmp/pushdeploy-podman}" ;;
  image) build_image && echo "$image" ;;
  *) die "usage: $0 start [DIR] | stop [DIR] | image" ;;
esac
