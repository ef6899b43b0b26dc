#!/usr/bin/env bash
# ApplicationStart: the very script pushdeploy's SSM Command document runs, with this
# deployment's values in place: log in, pull, replace the container, probe it, and bring
# the previous one back when the new one does not answer.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
exec bash "$here/pushdeploy/deploy.sh"
