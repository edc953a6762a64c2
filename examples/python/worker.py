"""A worker on the Work stream, from stubs generated with grpcio-tools.

hello → welcome → credits (CREDITS more slots, optional) → assignments
(up to CONCURRENCY + CREDITS at once) → heartbeats → progress (not
acknowledged) → completion or failure per job, each acknowledged →
cancellation stops a job
→ on SIGINT/SIGTERM it drains: takes nothing new, finishes what it holds,
then leaves. A lost stream or a draining server is reconnected to with
exponential backoff and jitter; a refused credential stops the worker.

    PYTHONPATH=examples/python/gen ADDR=127.0.0.1:50051 API_KEY=acp_… \\
        JOB_NAMES=py.echo python3 examples/python/worker.py

MAX_JOBS (optional) makes it drain and leave after that many jobs.

Over TLS: CA_FILE=ca.pem (and CLIENT_CERT_FILE, CLIENT_KEY_FILE for mutual
TLS), with ADDR a name the server's certificate carries (channel.py).
"""

import os
import queue
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import json_format

from channel import open_channel
from automation.v1 import jobs_pb2, jobs_pb2_grpc

FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def handle(job, cancelled: threading.Event, progress):
    """The work itself: echo the payload back (fail permanently on request),
    reporting progress on the way (GetJob and WatchJob show the latest)."""
    payload = json_format.MessageToDict(job.payload)
    if payload.get("fail"):
        raise PermanentError("asked to fail")
    progress(0, "waiting", {"seconds": payload.get("seconds", 0)})
    if cancelled.wait(float(payload.get("seconds", 0))):
        return None
    progress(100, "echoed")
    return {"echo": payload, "worker": "python"}


class PermanentError(Exception):
    pass


class Worker:
    def __init__(self):
        self.addr = os.environ.get("ADDR", "127.0.0.1:50051")
        self.auth = [("authorization", f"Bearer {os.environ['API_KEY']}")]
        self.names = [n for n in os.environ.get("JOB_NAMES", "").split(",") if n]
        self.concurrency = int(os.environ.get("CONCURRENCY", "4"))
        # Extra slots granted after the welcome (a worker can grow its
        # capacity on an open stream without reconnecting).
        self.credits = int(os.environ.get("CREDITS", "0"))
        self.max_jobs = int(os.environ.get("MAX_JOBS", "0"))
        self.done = 0
        self.stopping = threading.Event()

    def run(self) -> int:
        failures = 0
        while not self.stopping.is_set():
            try:
                self.session()
                failures = 0
                if self.stopping.is_set():
                    return 0
            except grpc.RpcError as error:
                if error.code() in FATAL:
                    print("refused:", error.code().name, error.details(), file=sys.stderr)
                    return 1
                if self.stopping.is_set():
                    return 0
                delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * (0.5 + random.random())
                failures += 1
                print(f"stream lost ({error.code().name}); reconnecting in {delay:.1f}s", file=sys.stderr)
                self.stopping.wait(delay)
        return 0

    def session(self):
        outbox = queue.Queue()
        outbox.put(jobs_pb2.WorkRequest(hello=jobs_pb2.WorkerHello(
            worker_id=f"python-{os.getpid()}", job_names=self.names,
            max_concurrency=self.concurrency)))

        def requests():
            while True:
                message = outbox.get()
                if message is None:
                    return
                yield message

        call = jobs_pb2_grpc.JobServiceStub(self.channel).Work(requests(), metadata=self.auth)
        running = {}  # job id -> (attempt, cancelled event)
        unacked = [0]
        lock = threading.Lock()
        draining = [False]

        def finish(job, attempt, cancelled):
            lease = jobs_pb2.JobLeaseRef(job_id=job.id, attempt=attempt)

            def progress(percent, message, details=None):
                # Best effort and not acknowledged; the server keeps the
                # latest (stored at most once a second, the last one with the
                # result). A real worker sends a few a second at most: they
                # count toward the stream's inbound budget.
                report = jobs_pb2.JobProgressReport(lease=lease, percent=percent, message=message[:1024])
                if details:
                    report.details.update(details)
                outbox.put(jobs_pb2.WorkRequest(progress=report))

            try:
                result = handle(job, cancelled, progress)
                report = jobs_pb2.WorkRequest(completion=jobs_pb2.JobCompletion(lease=lease))
                json_format.ParseDict(result, report.completion.result)
            except PermanentError as error:
                report = jobs_pb2.WorkRequest(failure=jobs_pb2.JobFailure(
                    lease=lease, message=str(error), permanent=True))
            except Exception as error:  # a bug in the handler: retry later
                report = jobs_pb2.WorkRequest(failure=jobs_pb2.JobFailure(lease=lease, message=repr(error)))
            with lock:
                running.pop(job.id, None)
                if cancelled.is_set():
                    return  # the lease is gone; the server would refuse it
                unacked[0] += 1
                self.done += 1
                if self.max_jobs and self.done >= self.max_jobs:
                    self.stopping.set()
            outbox.put(report)

        session_over = threading.Event()

        def heartbeats(every: float):
            while not session_over.wait(every):
                outbox.put(jobs_pb2.WorkRequest(heartbeat=jobs_pb2.WorkerHeartbeat()))

        def drain_when_stopping():
            while not self.stopping.wait(0.2):
                if session_over.is_set():
                    return
            draining[0] = True
            outbox.put(jobs_pb2.WorkRequest(drain=jobs_pb2.WorkerDrain()))
            outbox.put(jobs_pb2.WorkRequest(heartbeat=jobs_pb2.WorkerHeartbeat()))

        pool = ThreadPoolExecutor(self.concurrency + self.credits)
        threading.Thread(target=drain_when_stopping, daemon=True).start()
        try:
            for response in call:
                kind = response.WhichOneof("kind")
                if kind == "welcome":
                    every = response.welcome.heartbeat_interval.ToTimedelta().total_seconds()
                    threading.Thread(target=heartbeats, args=(every,), daemon=True).start()
                    print("welcome:", response.welcome.session_id, flush=True)
                    if self.credits:
                        outbox.put(jobs_pb2.WorkRequest(credit=jobs_pb2.WorkerCredit(credits=self.credits)))
                elif kind == "assignment":
                    job, attempt = response.assignment.job, response.assignment.attempt
                    cancelled = threading.Event()
                    with lock:
                        running[job.id] = (attempt, cancelled)
                    # The trace context of the call that created the job,
                    # to continue in this worker's own spans and logs.
                    trace = response.assignment.traceparent if response.assignment.HasField("traceparent") else None
                    print(f"running {job.name} {job.id} (attempt {attempt})" + (f" trace {trace}" if trace else ""), flush=True)
                    pool.submit(finish, job, attempt, cancelled)
                elif kind == "cancellation":
                    lease = response.cancellation.lease
                    with lock:
                        held = running.get(lease.job_id)
                    if held and held[0] == lease.attempt:
                        held[1].set()
                elif kind == "ack":
                    with lock:
                        unacked[0] -= 1
                elif kind == "drain":
                    print("the server is draining", flush=True)
                with lock:
                    if draining[0] and not running and unacked[0] <= 0:
                        break
        finally:
            session_over.set()
            outbox.put(None)
            call.cancel()
            pool.shutdown(wait=False)

    def __enter__(self):
        self.channel = open_channel(self.addr)
        return self

    def __exit__(self, *exc):
        self.channel.close()


if __name__ == "__main__":
    with Worker() as worker:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: worker.stopping.set())
        sys.exit(worker.run())
