#!/usr/bin/env bash
# pushdeploy's host side: replaces one container with a new image, keeping the old one
# until the new one answers its health probe. Run Command substitutes each parameter
# textually, so each is assigned exactly once, inside single quotes, and only the
# variables are used below.
set -euo pipefail
# Byte-wise character ranges in the patterns below, whatever the host's locale.
export LC_ALL=C
image='{{ Image }}'
registry='{{ Registry }}'
region='{{ Region }}'
container='{{ Container }}'
ports='{{ Ports }}'
health_port='{{ HealthPort }}'
health_path='{{ HealthPath }}'
health_timeout='{{ HealthTimeoutSeconds }}'
execution_timeout='{{ ExecutionTimeoutSeconds }}'
deployment_id='{{ DeploymentId }}'
previous="$container-previous"
had_previous=false

log() { echo "pushdeploy: $*"; }
fail() {
  local code=$1
  shift
  echo "pushdeploy: $*" >&2
  exit "$code"
}

# SSM has enforced allowedPattern already; checking again means a loosened pattern or a
# hand-run copy of this script still never hands a hostile value to a command.
expect() {
  local name=$1 pattern=$3
  local value=${!2}
  [[ $value =~ $pattern ]] || fail 2 "parameter $name is invalid: it must match $pattern"
}
expect Image image '^[a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+@sha256:[a-f0-9]{64}$'
expect Registry registry '^[a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]{1,5})?$'
expect Region region '^[a-z]{2}(-[a-z]+)+-[0-9]$'
expect Container container '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$'
expect Ports ports '^([0-9]{1,5}:[0-9]{1,5}(,[0-9]{1,5}:[0-9]{1,5})*)?$'
expect HealthPort health_port '^[0-9]{1,5}$'
expect HealthPath health_path '^/[a-zA-Z0-9._~/-]{0,199}$'
expect HealthTimeoutSeconds health_timeout '^[0-9]{1,3}$'
expect ExecutionTimeoutSeconds execution_timeout '^[0-9]{2,4}$'
expect DeploymentId deployment_id '^[0-9A-HJKMNP-TV-Z]{26}$'

# Run Command kills the script at ExecutionTimeoutSeconds, possibly before a failed
# container is replaced by the previous one again.
if ((10#$health_timeout >= 10#$execution_timeout)); then
  log "warning: HealthTimeoutSeconds $health_timeout is not below ExecutionTimeoutSeconds $execution_timeout"
fi

for tool in docker aws curl; do
  command -v "$tool" >/dev/null 2>&1 || fail 3 "$tool is not installed on this host; the running container is untouched"
done

exists() { docker container inspect "$1" >/dev/null 2>&1; }

# The new container failed: show why, remove it, and bring the previous one back.
restore_previous() {
  local reason=$1
  if exists "$container"; then
    log "the last lines of the new container's log:"
    docker logs --tail 50 "$container" 2>&1 | while IFS= read -r line; do log "| $line"; done || true
    docker rm -f "$container" >/dev/null || true
  fi
  if ! $had_previous; then
    fail 1 "$image $reason; there was no previous container to restore"
  fi
  if docker rename "$previous" "$container" && docker start "$container" >/dev/null; then
    fail 1 "$image $reason; restored the previous container"
  fi
  fail 1 "$image $reason, and restoring the previous container failed too: start $previous or $container by hand"
}

# A fresh ECR token on every run: tokens expire after 12 hours.
log "logging in to $registry"
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry" >/dev/null ||
  fail 1 "could not log in to $registry; the running container is untouched"

# Pull before touching anything, so that a missing image or a registry outage never
# stops what runs now.
log "pulling $image"
docker pull "$image" >/dev/null ||
  fail 1 "could not pull $image; the running container is untouched"

# Keep the running container, stopped, until the new one proves healthy. A previous
# container without a current one is what an interrupted run kept: it is the fallback.
if exists "$container"; then
  if exists "$previous"; then
    docker rm -f "$previous" >/dev/null
  fi
  docker rename "$container" "$previous"
  had_previous=true
  log "stopping the running container, kept as $previous"
  docker stop "$previous" >/dev/null || restore_previous "could not replace the running container"
elif exists "$previous"; then
  had_previous=true
fi

run_args=(-d --name "$container" --restart unless-stopped --label "pushdeploy.deployment=$deployment_id")
if [[ -n $ports ]]; then
  IFS=, read -r -a mappings <<<"$ports"
  for mapping in "${mappings[@]}"; do
    run_args+=(-p "$mapping")
  done
fi
env_file="/etc/pushdeploy/$container.env"
if [[ -f $env_file ]]; then
  run_args+=(--env-file "$env_file")
fi
log "starting $container from $image"
docker run "${run_args[@]}" "$image" >/dev/null || restore_previous "could not be started"

url="http://127.0.0.1:${health_port}${health_path}"
log "waiting up to ${health_timeout}s for $url to answer"
# 10# keeps a value like 090 decimal.
deadline=$((SECONDS + 10#$health_timeout))
last_error=""
until last_error=$(curl -fsS -o /dev/null --max-time 5 "$url" 2>&1); do
  if ((SECONDS >= deadline)); then
    log "last probe: $last_error"
    restore_previous "failed its health check"
  fi
  sleep 2
done

if $had_previous; then
  docker rm "$previous" >/dev/null || log "could not remove $previous; remove it by hand"
fi
log "deployed $image"
