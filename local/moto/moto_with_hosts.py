"""moto server, plus the one channel moto lacks for a real host: the SSM agent's replies.

In AWS, the SSM agent on an instance fetches each Run Command invocation and reports its
outcome back to SSM, so `ListCommands` and `GetCommandInvocation` say Pending, InProgress,
then Success or Failed. moto marks every command Success the moment it is sent, which would
let pushdeploy's tracker see a rollout as finished before the host has even started it.

This launcher starts the ordinary moto server with three changes:
  * a sent command and its invocations start Pending (as in AWS);
  * POST /_pushdeploy_local/ssm/invocation lets the local host agent report an invocation
    (status, exit code, output), and the command's status follows from its invocations;
  * CancelCommand (unimplemented in moto) marks pending invocations Cancelled and running
    ones Cancelling, which the agent turns into a killed script and a Cancelled invocation.
ECR's layer downloads come from ecr_layers.py. Everything else is moto, untouched. Arguments are moto_server's.
"""

import datetime
import json
import sys
import threading

from moto import server
from moto.core.responses import EmptyResult
from moto.moto_server import werkzeug_app
from moto.ssm import models as ssm
from moto.ssm import responses as ssm_responses

import ecr_layers

REPORT_PATH = "/_pushdeploy_local/ssm/invocation"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "Undeliverable", "Terminated"}
_lock = threading.Lock()

_original_init = ssm.Command.__init__


def _pending_command(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self.status = "Pending"
    self.status_details = "Pending"
    self.completed_count = 0
    self.error_count = 0
    self.target_count = len(self.instance_ids)
    for invocation in self.invocations:
        invocation.update(
            Status="Pending",
            StatusDetails="Pending",
            ResponseCode=-1,
            ExecutionElapsedTime="",
            ExecutionEndDateTime="",
        )


ssm.Command.__init__ = _pending_command


def _settle(command):
    """The command's status from its invocations, as SSM aggregates it (MaxErrors 0)."""
    statuses = [i["Status"] for i in command.invocations]
    done = [s for s in statuses if s in TERMINAL]
    failed = [s for s in done if s != "Success"]
    command.completed_count = len(done)
    command.error_count = len(failed)
    if not statuses:
        return
    if len(done) < len(statuses):
        running = any(s in ("InProgress", "Cancelling") for s in statuses)
        if "Cancelling" in statuses:
            command.status = command.status_details = "Cancelling"
        elif running:
            command.status = command.status_details = "InProgress"
        return
    if not failed:
        command.status = command.status_details = "Success"
    elif all(s == "Cancelled" for s in failed):
        command.status = command.status_details = "Cancelled"
    elif all(s == "TimedOut" for s in failed):
        command.status = "TimedOut"
        command.status_details = "Execution Timed Out"
    else:
        command.status = command.status_details = "Failed"


def _find(account, region, command_id):
    backend = ssm.ssm_backends[account][region]
    return backend.get_command_by_id(command_id)


def _report(environ, start_response):
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(size) or b"{}")
        with _lock:
            command = _find(body["Account"], body["Region"], body["CommandId"])
            invocation = next(
                i for i in command.invocations if i["InstanceId"] == body["InstanceId"]
            )
            status = body["Status"]
            now = datetime.datetime.now(datetime.timezone.utc)
            invocation["Status"] = status
            invocation["StatusDetails"] = body.get("StatusDetails", status)
            if status == "InProgress":
                invocation["ExecutionStartDateTime"] = now.isoformat()
            if status in TERMINAL:
                invocation["ResponseCode"] = int(body.get("ResponseCode", -1))
                invocation["ExecutionEndDateTime"] = now.isoformat()
                seconds = float(body.get("ElapsedSeconds", 0))
                invocation["ExecutionElapsedTime"] = f"PT{seconds:.3f}S"
                invocation["StandardOutputContent"] = body.get("StandardOutputContent", "")
                invocation["StandardErrorContent"] = body.get("StandardErrorContent", "")
            _settle(command)
            answer = {"CommandStatus": command.status}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]
    except Exception as error:  # the agent logs the answer; moto keeps serving
        start_response("400 Bad Request", [("Content-Type", "application/json")])
        return [json.dumps({"error": repr(error)}).encode()]


def _cancel_command(self):
    command_id = self._get_param("CommandId")
    instance_ids = self._get_param("InstanceIds") or []
    with _lock:
        command = self.ssm_backend.get_command_by_id(command_id)
        for invocation in command.invocations:
            if instance_ids and invocation["InstanceId"] not in instance_ids:
                continue
            if invocation["Status"] == "Pending":
                invocation["Status"] = invocation["StatusDetails"] = "Cancelled"
            elif invocation["Status"] == "InProgress":
                invocation["Status"] = invocation["StatusDetails"] = "Cancelling"
        _settle(command)
    return EmptyResult()


ssm_responses.SimpleSystemManagerResponse.cancel_command = _cancel_command


class _App(werkzeug_app.DomainDispatcherApplication):
    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == REPORT_PATH and environ.get("REQUEST_METHOD") == "POST":
            return _report(environ, start_response)
        return super().__call__(environ, start_response)


server.DomainDispatcherApplication = _App
ecr_layers.install()

if __name__ == "__main__":
    server.main(sys.argv[1:])
