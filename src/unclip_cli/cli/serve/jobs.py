"""The job queue of `unclip serve`: one job at a time, in one worker thread, in the order they came.

A job runs the verb's own code (`requests.Call.go`, i.e. `cli/run.py`), which loads the model stage by
stage and writes each chunk's PNGs as it finishes. Its progress (stage, step, images written) is kept
here for the page to poll. Cancelling a job, or stopping the server (Ctrl-C), makes the next sampling
step raise `interrupts.Interrupted`, exactly what a signal does to the CLI: the images already written
stay, the chunk in flight is dropped, no temporary file is left.
"""

import secrets
import signal
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from unclip_cli.cli import interrupts
from unclip_cli.cli.serve.common import HttpError
from unclip_cli.cli.serve.requests import Call, api_words
from unclip_cli.errors import UnclipError

MAX_QUEUED = 32
KEEP_FINISHED = 50  # finished jobs still listed
STOP_WAIT_S = 120.0  # how long a stopping server waits for the job in flight to reach its next step


class Job:
    def __init__(self, call: Call):
        self.id = secrets.token_hex(6)
        self.call = call
        self.state = "queued"  # then running, and done, failed, cancelled or stopped
        self.stage: dict | None = None  # {"name", "done", "total"} of the step in flight
        self.stages: list[str] = []  # stages run so far, in order
        self.images: list[str] = []  # output file names, as they are written
        self.error: str | None = None
        self.created, self.started, self.finished = time.time(), None, None
        self.cancel = threading.Event()

    def to_json(self, position: int | None = None) -> dict:
        out = {"id": self.id, "verb": self.call.verb, "state": self.state, **self.call.summary,
               "stage": dict(self.stage) if self.stage else None, "stages": list(self.stages),
               "images": list(self.images), "error": self.error, "created": self.created,
               "started": self.started, "finished": self.finished}
        if position is not None:
            out["position"] = position
        return out


class Queue:
    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="unclip-serve-jobs", daemon=True)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, call: Call) -> Job:
        with self._lock:
            if self._stopping:
                raise HttpError("the server is stopping", 503)
            if len(self._pending) >= MAX_QUEUED:
                raise HttpError(f"the queue is full ({MAX_QUEUED} jobs waiting); try again later", 429)
            job = Job(call)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise HttpError(f"no such job: {job_id[:40]!r}", 404)
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        """A queued job is dropped; a running one stops after its current step (its written images stay)."""
        with self._lock:
            job = self.get(job_id)
            if job.state == "queued":
                self._pending.remove(job)
                job.state, job.finished = "cancelled", time.time()
            job.cancel.set()
            return job

    def listing(self) -> list[dict]:
        with self._lock:
            waiting = {j.id: i + 1 for i, j in enumerate(self._pending)}
            return [j.to_json(waiting.get(j.id)) for j in reversed(self._jobs.values())]

    def stop(self) -> None:
        """Cancel every job, stop the one in flight after its step and wait for the worker to end."""
        with self._lock:
            self._stopping = True
            for job in self._pending:
                job.state, job.finished = "cancelled", time.time()
            self._pending.clear()
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)

    def summary(self) -> str:
        n = self.written
        return f"{n} image{'s' if n != 1 else ''} written this session" if n else "no image written this session"

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.finished is not None]
        for j in done[:max(0, len(done) - KEEP_FINISHED)]:
            del self._jobs[j.id]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                job.state, job.started = "running", time.time()
            self._run(job)

    def _run(self, job: Job) -> None:
        args = job.call.args
        args.on_step = lambda stage, done, total: self._step(job, stage, done, total)
        args.on_image = lambda path: self._image(job, path)
        try:
            paths = job.call.go(args)
            state, error = "done", None
        except interrupts.Interrupted as e:
            state, error = ("stopped" if self._stopping else "cancelled"), e.message
        except UnclipError as e:
            state, error = "failed", api_words(str(e))
        except Exception as e:  # a bug: the job fails with one line, the traceback goes to the server's log
            traceback.print_exc(file=sys.stderr)
            state, error = "failed", f"internal error ({e.__class__.__name__}: {str(e)[:200]}); see the server's log"
        else:
            for p in paths:  # `mix` writes its images at the end, without on_image
                self._image(job, p)
        with self._lock:
            job.state, job.error, job.stage, job.finished = state, error, None, time.time()
        n = len(job.images)
        sys.stderr.write(f"job {job.id} ({job.call.verb}): {state}, {n} image{'s' if n != 1 else ''}"
                         f"{': ' + error if error else ''}\n")

    def _step(self, job: Job, stage: str, done: int, total: int) -> None:
        if job.cancel.is_set():
            raise interrupts.Interrupted(signal.SIGINT, "cancelled")
        if not job.stages or job.stages[-1] != stage:
            job.stages.append(stage)
        job.stage = {"name": stage, "done": done, "total": total}

    def _image(self, job: Job, path: Path) -> None:
        if path.name not in job.images:
            job.images.append(path.name)
            self.written += 1
