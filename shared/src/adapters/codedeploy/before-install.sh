#!/usr/bin/env bash
# BeforeInstall: a fresh ECR login (tokens expire after 12 hours) and the pull by digest,
# before anything that runs is touched.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=pushdeploy/params.sh
. "$here/pushdeploy/params.sh"

for tool in docker aws; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "pushdeploy: $tool is not installed on this host; the running container is untouched" >&2
    exit 3
  }
done
echo "pushdeploy: logging in to $registry"
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry" >/dev/null || {
  echo "pushdeploy: could not log in to $registry; the running container is untouched" >&2
  exit 1
}
echo "pushdeploy: pulling $image"
docker pull "$image" >/dev/null || {
  echo "pushdeploy: could not pull $image; the running container is untouched" >&2
  exit 1
}
