"""Long jobs (training, generation, evaluation) run in a background thread, with their
state kept in the project folder.

A job is a record in ``PROJECT/.studio/jobs/<id>.json``, rewritten atomically at every
change (state, phase, each training epoch), so a page that reloads asks for the
project's jobs and re-attaches to the one still running, and the record of a finished
job stays. One job runs at a time per project: a second one is refused with
:class:`~inspectkit.studio.safety.Busy` naming the one that runs. Cancelling sets a flag
that the job checks between epochs (:func:`inspectkit.runtime.observe_epochs`) and
between its steps; the job then ends as ``cancelled``. A running job holds an exclusive
``flock`` on ``.studio/job.lock``, so a second studio process on the same folder refuses
to start another one, and a record left ``running`` is marked ``interrupted`` only when
no process holds that lock (the studio that ran it stopped).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inspectkit.atomic import atomic_write
from inspectkit.errors import InspectkitError
from inspectkit.studio.safety import Busy, NotFound, is_plain_file

try:
    import fcntl
except ImportError:  # Windows: one studio per project folder is up to the user
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("done", "failed", "cancelled", "interrupted")
#: Finished job records kept per project (older ones are deleted).
KEEP_FINISHED = 50


class Cancelled(Exception):
    """Raised inside a job when its cancel flag is seen."""


@dataclass
class Job:
    """What the page shows of one job (saved as JSON)."""

    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    phase: str = ""
    epoch: int = 0
    epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    server: str = ""
    version: int = 0

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("server")
        return out


class JobContext:
    """Handed to a job function: report progress, check the cancel flag."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self._runner = runner
        self.job = job
        self.cancel_flag = threading.Event()

    def phase(self, text: str) -> None:
        """Enter a named step (shown on screen); a cancel is honoured here."""
        self.check()
        self._runner.update(self.job, phase=text)

    def epoch(self, entry: dict[str, float], epochs: int) -> None:
        """One training epoch ended (an :func:`inspectkit.runtime.observe_epochs` callback)."""
        row = {k: float(v) for k, v in entry.items()}
        self._runner.update(
            self.job,
            epoch=int(row.get("epoch", len(self.job.history))) + 1,
            epochs=int(epochs),
            history=[*self.job.history, row],
        )
        self.check()

    def check(self) -> None:
        if self.cancel_flag.is_set():
            raise Cancelled()


class JobRunner:
    """The jobs of one project folder (``root/.studio/jobs``)."""

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / ".studio" / "jobs"
        self.server = secrets.token_hex(8)  # this process; records of others are stale
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._contexts: dict[str, JobContext] = {}
        self._changed = threading.Condition(self._lock)
        self._load()

    # ------------------------------------------------------------------ records
    def _lock_file(self) -> int | None:
        """An exclusive lock on ``.studio/job.lock`` (its descriptor), or ``None`` when
        another process holds it."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder.parent / "job.lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        probe = self._lock_file()
        stale = probe is not None  # no other process runs a job here
        self._unlock(probe)
        for path in sorted(self.folder.glob("*.json")):
            if not is_plain_file(path):
                continue
            try:
                raw = json.loads(path.read_text())
                job = Job(**raw)
            except (OSError, ValueError, TypeError):
                log.warning("ignoring unreadable job record %s", path)
                continue
            if job.state in ACTIVE and stale:  # left running by a studio that is gone
                job.state = "interrupted"
                job.error = "the studio stopped while this job ran; start it again"
                job.finished = job.finished or time.time()
                self._save(job)
            self._jobs[job.id] = job

    def _save(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / f"{job.id}.json", json.dumps(asdict(job)))

    def update(self, job: Job, **changes: Any) -> None:
        with self._changed:
            for k, v in changes.items():
                setattr(job, k, v)
            job.version += 1
            self._save(job)
            self._changed.notify_all()

    # ------------------------------------------------------------------ queries
    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} in this project")
        return job

    def active(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.state in ACTIVE), None)

    def wait_change(self, job: Job, version: int, timeout: float) -> int:
        """Block until ``job.version`` differs from ``version`` (or ``timeout`` s)."""
        with self._changed:
            self._changed.wait_for(lambda: job.version != version, timeout=timeout)
            return job.version

    # ------------------------------------------------------------------ running
    def start(
        self, kind: str, params: dict[str, Any], func: Callable[[JobContext], dict[str, Any]]
    ) -> Job:
        """Run ``func(ctx)`` in a background thread as a new job; :class:`Busy` when one
        already runs in this project."""
        with self._changed:
            running = next((j for j in self._jobs.values() if j.state in ACTIVE), None)
            if running is not None:
                since = time.strftime("%H:%M", time.localtime(running.started or running.created))
                raise Busy(
                    f"a {running.kind} job is already running here (since {since}); "
                    "wait for it to finish or cancel it first"
                )
            lock = self._lock_file()
            if lock is None:
                raise Busy("another studio is running a job in this project folder")
            job = Job(id=_new_id(), kind=kind, params=dict(params), server=self.server)
            ctx = JobContext(self, job)
            self._jobs[job.id] = job
            self._contexts[job.id] = ctx
            self._save(job)
            self._prune()
        thread = threading.Thread(
            target=self._run,
            args=(job, ctx, func, lock),
            name=f"studio-{kind}-{job.id}",
            daemon=True,
        )
        thread.start()
        return job

    def _run(
        self,
        job: Job,
        ctx: JobContext,
        func: Callable[[JobContext], dict[str, Any]],
        lock: int | None,
    ) -> None:
        self.update(job, state="running", started=time.time())
        final: dict[str, Any]
        try:
            final = {"state": "done", "phase": "done", "result": func(ctx) or {}}
        except Cancelled:
            final = {"state": "cancelled", "phase": "cancelled"}
        except InspectkitError as exc:
            final = {"state": "failed", "error": " ".join(str(exc).split())}
        except Exception as exc:  # an internal failure: a line on screen, the trace in the log
            log.error("studio job %s failed:\n%s", job.id, traceback.format_exc())
            final = {
                "state": "failed",
                "error": f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}",
            }
        # free the project before saying so: a page that sees "done" may start the next job
        with self._lock:
            self._contexts.pop(job.id, None)
        self._unlock(lock)
        self.update(job, finished=time.time(), **final)

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._lock:
            ctx = self._contexts.get(job_id)
        if ctx is not None and job.state in ACTIVE:
            ctx.cancel_flag.set()
            self.update(job, state="cancelling")
        return job

    def join(self, timeout: float = 60.0) -> None:
        """Wait until no job runs (tests, shutdown)."""
        end = time.monotonic() + timeout
        while self.active() is not None and time.monotonic() < end:
            time.sleep(0.05)

    def _prune(self) -> None:
        finished = sorted(
            (j for j in self._jobs.values() if j.state in FINISHED), key=lambda j: j.created
        )
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self._jobs.pop(job.id, None)
            (self.folder / f"{job.id}.json").unlink(missing_ok=True)


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


__all__ = ["ACTIVE", "FINISHED", "Cancelled", "Job", "JobContext", "JobRunner"]
