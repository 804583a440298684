"""Browser sessions, their private temporary folders, and the protect jobs run for them.

Every browser session gets a folder of its own (``tempfile.mkdtemp``, mode 0700) inside the
server's private root folder; uploads, protected files, previews and zips live there and nowhere
else. A session's folder is deleted when the page says goodbye (``/api/clear``), when the session
has been idle longer than ``ttl_s``, and when the server stops (:meth:`SessionStore.close`).

Jobs run one at a time on a single worker thread (one protect run already uses every core), in
the order they were submitted; the page polls a job's progress.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

log = logging.getLogger("lbcore.apps.web")

__all__ = ["Job", "JobCancelled", "Session", "SessionStore"]


@attrs.define(eq=False)
class Job:
    """One press of Protect: the uploaded files and, once run, the protect report."""

    id: str
    session: Session
    folder: Path
    inputs: list[Path]
    names: list[str]
    options: dict[str, Any]
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    seq: int = 0  # submission order (the queue position counts the unfinished jobs before it)
    files_done: int = 0
    file_fraction: float = 0.0
    message: str = "waiting for an earlier job to finish"
    error: str | None = None
    report: dict[str, Any] | None = None
    created: float = attrs.field(factory=time.time)
    started: float | None = None
    finished: float | None = None

    @property
    def in_dir(self) -> Path:
        return self.folder / "in"

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def fraction(self) -> float:
        """Share of the work done, 0..1 (per file, refined by a video's frame count)."""
        if self.state == "done":
            return 1.0
        return min(1.0, (self.files_done + self.file_fraction) / max(1, len(self.inputs)))

    def display(self, text: str) -> str:
        """``text`` with the private paths replaced by the names the user uploaded."""
        for path, name in zip(self.inputs, self.names, strict=True):
            text = text.replace(str(path), name)
        return text.replace(str(self.folder) + os.sep, "")


_FRAMES = re.compile(r": (\d+)/(\d+) frames$")


_FINAL = frozenset({"protected", "unchanged", "done earlier", "error", "skipped", "interrupted"})
"""The status words that end a file's progress ("<path>: <status>")."""


class JobCancelled(BaseException):  # not an Exception: protect() must not record it as a file error
    """Raised inside a running job (from its progress callback) once its page session has ended."""


@attrs.define(eq=False)
class Session:
    """One page load: a private folder (made on first use) and its jobs.

    The id is a secret shared only with that page (sent in a request header, never in a URL or
    a cookie), so another site cannot act on the session and two tabs never share files.
    """

    id: str
    folder: Path | None = None
    jobs: dict[str, Job] = attrs.field(factory=dict)
    last_seen: float = attrs.field(factory=time.monotonic)
    closed: bool = False

    def ensure_folder(self, root: Path) -> Path:
        """The session's private folder, made on first use (a page view alone leaves no trace)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="s-", dir=root))  # mode 0700
        return self.folder

    def busy(self) -> bool:
        return any(j.state in ("queued", "running") for j in self.jobs.values())


class SessionStore:
    """All sessions of one server, the job queue and the worker thread.

    Args:
        run: the function a job calls: ``run(inputs, out_dir, progress=..., **options)`` returning
            the report (:func:`lbcore.apps.protection.protect`).
        root: parent folder for the private root (default: the system's temporary folder).
        ttl_s: idle seconds after which a session and its files are deleted.
    """

    def __init__(self, run: Callable[..., dict[str, Any]], root: str | os.PathLike[str] | None = None,
                 ttl_s: float = 3600.0) -> None:
        self.run = run
        self.root = Path(tempfile.mkdtemp(prefix="lb-web-", dir=root))  # mode 0700
        self.ttl_s = ttl_s
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.closed = False
        self._seq = 0
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="lb-web-sweeper", daemon=True)
        self._sweeper.start()

    # -- sessions --------------------------------------------------------------------------
    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched), or None."""
        with self.lock:
            s = self.sessions.get(session_id or "")
            if s is not None:
                s.last_seen = time.monotonic()
            return s

    def create(self) -> Session:
        """A new session with its own private folder."""
        with self.lock:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            sid = secrets.token_urlsafe(24)
            s = Session(sid)
            self.sessions[sid] = s
            return s

    def end(self, session: Session) -> None:
        """End a session: its files are deleted now, or when its running job finishes."""
        with self.lock:
            session.closed = True
            self.sessions.pop(session.id, None)
            for jid in session.jobs:
                self.jobs.pop(jid, None)
            running = any(j.state == "running" for j in session.jobs.values())
        if not running and session.folder is not None:
            _rmtree(session.folder)

    def sweep(self) -> list[str]:
        """End sessions idle for longer than ``ttl_s``; returns their ids."""
        now = time.monotonic()
        with self.lock:
            old = [s for s in self.sessions.values() if now - s.last_seen > self.ttl_s and not s.busy()]
        for s in old:
            log.info("session %s expired: its files are deleted", s.id[:6])
            self.end(s)
        return [s.id for s in old]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(60.0, max(1.0, self.ttl_s / 4))):
            try:
                self.sweep()
            except Exception:  # never let the sweeper die silently
                log.exception("session sweep failed")

    # -- jobs ------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job | None:
        """The job with this id while its session lives (the session is touched), or None."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.session.closed:
                return None
            job.session.last_seen = time.monotonic()
            return job

    def new_job(self, session: Session) -> Job:
        """A job with an empty private folder (``in/``, ``out/``) inside the session's."""
        jid = secrets.token_urlsafe(16)  # unguessable: the job's URLs are its only key
        with self.lock:
            base = session.ensure_folder(self.root)
        folder = base / f"job-{jid}"
        (folder / "in").mkdir(parents=True, mode=0o700)
        return Job(jid, session, folder, [], [], {})

    def position(self, job: Job) -> int:
        """How many unfinished jobs (of any session) run or wait before ``job``; 0 once it runs."""
        if job.state != "queued":
            return 0
        with self.lock:
            return sum(1 for j in self.jobs.values()
                       if j.seq < job.seq and j.state in ("queued", "running") and not j.session.closed)

    def submit(self, job: Job) -> None:
        """Queue a job whose inputs are in place; the worker starts when first needed."""
        with self.lock:
            self._seq += 1
            job.seq = self._seq
            job.session.jobs[job.id] = job
            self.jobs[job.id] = job
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="lb-web-worker", daemon=True)
                self._worker.start()
        self.queue.put(job)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if job.session.closed or self.closed:
                continue
            self._run(job)
            if job.session.closed and job.session.folder is not None:
                _rmtree(job.session.folder)  # ended while running: now its files can go

    def _run(self, job: Job) -> None:
        first = job.names[0] if job.names else "the files"
        job.state, job.started = "running", time.time()
        job.message = f"loading the face detector and landmark models, then protecting {first}"
        done_prefixes = [f"{p}: " for p in job.inputs]

        def progress(line: str) -> None:
            if job.session.closed or self.closed:
                raise JobCancelled  # the page was closed: stop at the next step, not at the end
            m = _FRAMES.search(line)
            if m:
                job.file_fraction = int(m.group(1)) / max(1, int(m.group(2)))
                job.message = job.display(line)
            elif any(line.startswith(p) and line[len(p):] in _FINAL for p in done_prefixes):
                job.files_done += 1
                job.file_fraction = 0.0
                following = job.names[job.files_done] if job.files_done < len(job.names) else None
                job.message = job.display(line) + (f"; now protecting {following}" if following else "")
            else:
                job.message = job.display(line)

        try:
            job.report = self.run(job.inputs, job.out_dir, progress=progress, **job.options)
            job.state, job.message = "done", "finished"
        except JobCancelled:
            job.state, job.message = "cancelled", "cancelled: the page was closed"
            log.info("job %s cancelled: its page was closed", job.id[:6])
        except Exception as err:  # a user problem or a bug: the page gets one line, the log the rest
            from lbcore.errors import LBError

            if isinstance(err, LBError):
                job.error = job.display(str(err))
            else:
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                job.error = f"internal error ({type(err).__name__}): see the server's log"
            job.state, job.message = "failed", job.error
        finally:
            job.finished = time.time()

    # -- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the threads and delete every session's files and the private root."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            sessions = list(self.sessions.values())
            self.sessions.clear()
            self.jobs.clear()
        self._stop.set()
        self.queue.put(None)
        for s in sessions:
            s.closed = True
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(timeout=30)  # a running protect cannot be interrupted; wait a little
        _rmtree(self.root)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
