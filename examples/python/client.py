"""A client of the control plane, from stubs generated with grpcio-tools.

Logs in, lists users, enqueues a job and watches it to the end (printing
the worker's last progress report), then shows
how an error is read: the status code, the google.rpc.ErrorInfo reason to
branch on, and the google.rpc.BadRequest field violations.

    OUT=gen examples/python/generate.sh
    PYTHONPATH=examples/python/gen ADDR=127.0.0.1:50051 LOGIN=admin PASSWORD=… \\
        python3 examples/python/client.py

Over TLS: CA_FILE=ca.pem (and CLIENT_CERT_FILE, CLIENT_KEY_FILE for mutual
TLS), with ADDR a name the server's certificate carries (channel.py).
"""

import json
import os
import sys

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from channel import open_channel
from automation.v1 import auth_pb2, auth_pb2_grpc
from automation.v1 import jobs_pb2, jobs_pb2_grpc
from automation.v1 import users_pb2, users_pb2_grpc


def error_details(error: grpc.RpcError):
    """The ErrorInfo reason and the BadRequest violations of an error."""
    reason, violations = None, []
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def main() -> int:
    channel = open_channel(os.environ.get("ADDR", "127.0.0.1:50051"))
    login = auth_pb2_grpc.AuthServiceStub(channel).Login(
        auth_pb2.LoginRequest(login=os.environ["LOGIN"], password=os.environ["PASSWORD"])
    )
    auth = [("authorization", f"Bearer {login.access_token}")]

    users = users_pb2_grpc.UserServiceStub(channel)
    page = users.ListUsers(users_pb2.ListUsersRequest(page_size=10), metadata=auth)
    print("users:", ", ".join(u.username for u in page.users))

    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    payload = jobs_pb2.CreateJobRequest(name=os.environ.get("JOB_NAME", "py.echo"))
    payload.payload.update({"greeting": "hello from python"})
    # A W3C trace context: the server continues it in its logs, stores it
    # with the job, and hands it to the worker that runs the job.
    traceparent = os.environ.get("TRACEPARENT") or f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
    job = jobs.CreateJob(payload, metadata=auth + [("traceparent", traceparent)]).job
    print("created:", job.id, "trace:", traceparent)
    # WatchJob streams the job now, then each change, and ends when it is
    # finished; the timeout bounds the wait.
    last = None
    for update in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=auth, timeout=60):
        last = update.job
    result = json_format.MessageToDict(last.result)
    print("watch:", jobs_pb2.JobStatus.Name(last.status), json.dumps(result, sort_keys=True))
    # What the worker last reported on its way (kept once the job is done).
    if last.HasField("progress"):
        percent = f"{last.progress.percent:g}%" if last.progress.HasField("percent") else "-"
        print("progress:", percent, last.progress.message)

    try:
        users.CreateUser(
            users_pb2.CreateUserRequest(email="not-an-email", username="py", password="a-long-password"),
            metadata=auth,
        )
    except grpc.RpcError as error:
        reason, violations = error_details(error)
        print("error:", error.code().name, reason)
        for field, description in violations:
            print(f"bad request: {field}: {description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
