#!/usr/bin/env bash
# ApplicationStop runs the copy of this hook from the revision deployed before. Nothing is
# stopped here: the running container keeps serving until the new one answers its health
# probe in ApplicationStart. Deployments are created with ignoreApplicationStopFailures,
# so a broken copy of this hook in an older revision never blocks the next one.
echo "pushdeploy: the running container keeps serving until the new one is healthy"
