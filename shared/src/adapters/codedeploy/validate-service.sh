#!/usr/bin/env bash
# ValidateService: the container runs this deployment's image and answers its health
# probe. A failure here fails the deployment, and CodeDeploy's automatic rollback
# redeploys the previous revision.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=pushdeploy/params.sh
. "$here/pushdeploy/params.sh"

fail() {
  echo "pushdeploy: $*" >&2
  exit 1
}
running=$(docker container inspect --format '{{.State.Running}} {{.Config.Image}}' "$container" 2>/dev/null) ||
  fail "there is no container $container"
[[ $running == "true $image" ]] || fail "container $container is not running $image ($running)"
curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$health_port$health_path" ||
  fail "container $container does not answer http://127.0.0.1:$health_port$health_path"
echo "pushdeploy: $container runs $image and answers its health probe"
