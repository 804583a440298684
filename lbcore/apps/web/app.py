"""The Flask application behind ``lb serve``: a page that protects photos and a short video.

The page calls the same :func:`lbcore.apps.protection.protect` as ``lb protect``; this module only
receives uploads, runs jobs, and presents the report (previews, plain-word numbers, downloads).

Routes (JSON unless noted):

* ``GET /`` - the page (HTML). Each page load is a new session whose id is written into the page.
* ``POST /api/jobs`` - multipart ``files`` (repeatable), ``strength`` (low/medium/high) and
  ``robust`` (1/0); header ``X-LB-Session``. Answers 202 with the job's id and URL and the files
  it could not take (``rejected``: name and problem each; the good files go ahead), 400/413 with
  ``{"error": ..., "problems": [...]}`` when no file is usable, 429 when the session already has
  ``max_queued`` unfinished jobs.
* ``GET /api/jobs/<id>`` - state, queue ``position``, progress (0..1 and a line of text), and
  once done the results.
* ``GET /api/jobs/<id>/files/<n>/preview`` - the side-by-side PNG of file ``n``.
* ``GET /api/jobs/<id>/files/<n>/download`` - the protected file ``n`` (attachment).
* ``GET /api/jobs/<id>/download`` - every protected file and the report in one zip.
* ``POST /api/clear`` - end the session and delete its files (header or form field ``session``).

Every ``/api/jobs/<id>...`` URL answers only with the header ``X-LB-Session`` of the session that
submitted the job (the page fetches previews and downloads with it). Closing the page
(``/api/clear``) cancels its running job at the next progress step.

Safety: bound to loopback by default, requests whose Host is not ``localhost`` or a literal
loopback address are refused (so a web site cannot reach the server by re-pointing its own host
name, even ``127.0.0.1.example.com``, at 127.0.0.1); a POST whose ``Origin`` is another site is
refused; no cookies: the session id travels in a header, so other sites cannot submit jobs; uploads are
size-limited and spooled only inside the server's private temporary folder; the page loads
nothing from the network.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flask import Flask, Request, Response, abort, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from lbcore.apps.web.store import Job, Session, SessionStore
from lbcore.apps.web.words import describe_record

__all__ = ["create_app", "make_server", "DEFAULT_MAX_UPLOAD_MB", "LOOPBACK_HOSTS", "is_loopback"]

log = logging.getLogger("lbcore.apps.web")

DEFAULT_MAX_UPLOAD_MB = 25.0
"""Largest upload (all files of one Protect together), in MB (``--max-upload-mb``)."""

DEFAULT_MAX_FILES = 20
DEFAULT_MAX_PIXELS = 40_000_000
"""Largest photo the page accepts (width x height); larger ones would take minutes on a CPU."""

DEFAULT_MAX_FRAMES = 900
"""Longest video the page accepts, in frames ("a short video": 30 s at 30 frames/s)."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

DEFAULT_MAX_QUEUED = 3
"""Most unfinished jobs (queued or running) one page session may have at a time."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, brackets allowed, no port) only listens on this computer.

    Only the name ``localhost`` and literal loopback addresses count (``127.0.0.0/8``, ``::1``,
    ``::ffff:127.x.y.z``): a name such as ``127.0.0.1.example.com`` may resolve anywhere, and a
    web site that points its own name at 127.0.0.1 must not become the page's origin.
    """
    import ipaddress

    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


class _PrivateRequest(Request):
    """Spools uploaded files into the server's private folder instead of the system's /tmp."""

    spool_dir: str | None = None

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        # an anonymous (already unlinked) file: nothing is left behind even after a crash
        return tempfile.TemporaryFile("wb+", dir=self.spool_dir)


def create_app(
    *,
    protect_options: dict[str, Any] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_files: int = DEFAULT_MAX_FILES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_queued: int = DEFAULT_MAX_QUEUED,
    loopback_only: bool = True,
    session_ttl_s: float = 3600.0,
    temp_root: str | os.PathLike[str] | None = None,
    run: Callable[..., dict[str, Any]] | None = None,
) -> Flask:
    """Build the web application.

    Args:
        protect_options: extra :class:`lbcore.apps.protection.ProtectOptions` fields for every job
            (e.g. ``extractors``, ``device``, ``steps``); the page's strength and robust choices
            are added to them.
        max_upload_mb: largest upload per Protect (all files together), in MB.
        max_files: most files per Protect.
        max_pixels: largest photo accepted (width x height).
        max_frames: longest video accepted (frames).
        max_queued: most unfinished jobs one page session may have at a time.
        loopback_only: refuse requests whose Host header is not a loopback name (set False when
            serving on another interface on purpose).
        session_ttl_s: idle seconds after which a session's files are deleted.
        temp_root: where the private temporary folder is made (default: the system's).
        run: the protect function (default :func:`lbcore.apps.protection.protect`; tests may wrap it).

    Returns:
        The Flask app; ``app.extensions["lb_store"]`` is its :class:`SessionStore`, whose
        ``close()`` deletes every file the server wrote (called at interpreter exit too).
    """
    import atexit

    from lbcore.apps.protection import protect

    store = SessionStore(run or protect, root=temp_root, ttl_s=session_ttl_s)
    atexit.register(store.close)
    spool = store.root / "uploads"
    spool.mkdir(mode=0o700)

    class AppRequest(_PrivateRequest):
        spool_dir = str(spool)

    app = Flask(__name__)
    app.request_class = AppRequest
    app.config.update(
        MAX_CONTENT_LENGTH=int(max_upload_mb * 1_000_000),
        JSON_SORT_KEYS=False,
    )
    app.extensions["lb_store"] = store
    limits = {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_pixels": max_pixels,
              "max_frames": max_frames}
    base_options = dict(protect_options or {})
    zip_lock = threading.Lock()

    # -- guards and errors ---------------------------------------------------------------
    @app.before_request
    def _check_host() -> Any:
        if loopback_only and not is_loopback(_hostname(request.host or "")):
            return _error(f"this server answers only to 127.0.0.1 or localhost, not {request.host!r}", 400)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # a state-changing request from a browser names its page's origin: it must be this server
            origin = request.headers.get("Origin")
            if origin is not None and not _same_origin(origin, request.host or ""):
                return _error(f"requests from {origin!r} are refused: use the page this server shows", 403)
            if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                return _error("requests from other sites are refused: use the page this server shows", 403)
        return None

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(err: RequestEntityTooLarge) -> Any:
        size = request.content_length
        got = f" (this one is {size / 1e6:.1f} MB)" if size else ""
        return _error(f"The upload is too large{got}: at most {max_upload_mb:g} MB per Protect. "
                      "Choose fewer or smaller files (the server's limit is set with lb serve --max-upload-mb).", 413)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Any:
        return _error(err.description or err.name, err.code or 500)

    @app.errorhandler(Exception)
    def _crash(err: Exception) -> Any:
        from lbcore.errors import LBError

        if isinstance(err, LBError):
            return _error(str(err), 400)
        log.exception("internal error on %s", request.path)
        return _error(f"internal error ({type(err).__name__}); the details are in the server's log", 500)

    # -- the page -----------------------------------------------------------------------
    @app.get("/")
    def index() -> Any:
        from lbcore.apps.protection import STRENGTHS

        store.sweep()
        session = store.create()
        return render_template("index.html", session_id=session.id, limits=limits, strengths=STRENGTHS,
                               max_bytes=app.config["MAX_CONTENT_LENGTH"])

    # -- jobs -----------------------------------------------------------------------------
    def _session() -> Session:
        sid = request.headers.get("X-LB-Session") or request.form.get("session")
        session = store.get(sid)
        if session is None:
            abort(_error("This page's session has ended and its files were deleted: reload the page.", 409))
        return session

    def _job(job_id: str) -> Job:
        """The job, only for the page session that submitted it (header ``X-LB-Session``)."""
        sid = request.headers.get("X-LB-Session")
        job = store.job(job_id)
        if job is None or not sid or not secrets.compare_digest(job.session.id, sid):
            abort(_error("No such job (its session may have ended): reload the page.", 404))
        return job

    @app.post("/api/jobs")
    def submit() -> Any:
        from lbcore.apps.protection import STRENGTHS

        session = _session()
        uploads = [f for f in request.files.getlist("files") if f.filename]
        if not uploads:
            return _error("Choose at least one photo or video first.", 400)
        if len(uploads) > max_files:
            return _error(f"Too many files ({len(uploads)}): at most {max_files} per Protect.", 400)
        strength = request.form.get("strength", "medium")
        if strength not in STRENGTHS:
            return _error(f"Unknown strength {strength!r}: choose {', '.join(STRENGTHS)}.", 400)
        robust = request.form.get("robust", "0").lower() in ("1", "true", "on", "yes")
        unfinished = sum(1 for j in session.jobs.values() if j.state in ("queued", "running"))
        if unfinished >= max_queued:
            return _error(f"This page already has {unfinished} unfinished job(s), the most one page may have: "
                          "wait for one to finish, then press Protect again.", 429)
        job = store.new_job(session)
        problems: list[str] = []
        rejected: list[dict[str, str]] = []
        used: set[str] = set()
        for i, upload in enumerate(uploads):
            name = os.path.basename((upload.filename or "").replace("\\", "/")) or f"file {i + 1}"
            path = job.in_dir / _unique(secure_filename(name) or f"upload-{i + 1}", used)
            upload.save(path)
            problem = _check_media(path, name, max_pixels, max_frames)
            if problem:
                # the good files still go ahead; the page shows this one's problem beside its name
                problems.append(problem)
                rejected.append({"index": str(i), "name": name, "problem": problem})
                path.unlink(missing_ok=True)
                continue
            job.inputs.append(path)
            job.names.append(name)
        if not job.inputs:
            from lbcore.apps.web.store import _rmtree

            _rmtree(job.folder)
            what = "This file cannot" if len(problems) == 1 else f"{len(problems)} files cannot"
            return _error(f"{what} be protected: " + "; ".join(problems), 400, problems=problems,
                          rejected=rejected)
        job.options = {**base_options, "strength": strength, "robust": robust, "preview": True,
                       "max_pixels": max_pixels, "max_frames": max_frames}
        store.submit(job)
        log.info("job %s: %d file(s), strength %s%s", job.id[:6], len(job.inputs), strength,
                 ", robust" if robust else "")
        return jsonify(job=job.id, url=f"/api/jobs/{job.id}", problems=problems, rejected=rejected), 202

    @app.get("/api/jobs/<job_id>")
    def status(job_id: str) -> Any:
        job = _job(job_id)
        body: dict[str, Any] = {
            "job": job.id, "state": job.state, "fraction": round(job.fraction, 3),
            "message": job.message, "error": job.error, "files_total": len(job.inputs),
            "files_done": job.files_done, "position": store.position(job),
            "elapsed": round((job.finished or _now()) - job.started, 1) if job.started else 0.0,
        }
        if job.state == "done" and job.report is not None:
            body.update(_results(job))
        return jsonify(body)

    @app.get("/api/jobs/<job_id>/files/<int:index>/preview")
    def preview(job_id: str, index: int) -> Any:
        job = _job(job_id)
        rec = _record(job, index)
        if rec.get("preview"):
            return send_file(_inside(job, rec["preview"]), mimetype="image/png")
        if rec.get("kind") == "video" and rec.get("status") == "protected":
            return send_file(_video_still(job, index, rec), mimetype="image/png")
        abort(404, "this file has no preview")

    @app.get("/api/jobs/<job_id>/files/<int:index>/faces/<int:face>/closeup")
    def closeup(job_id: str, index: int, face: int) -> Any:
        job = _job(job_id)
        rec = _record(job, index)
        faces = rec.get("faces") or []
        if not rec.get("preview") or not 0 <= face < len(faces):
            abort(404, "no close-up for this face")
        return send_file(_closeup(job, index, face, rec), mimetype="image/png")

    @app.get("/api/jobs/<job_id>/files/<int:index>/download")
    def download(job_id: str, index: int) -> Any:
        job = _job(job_id)
        rec = _record(job, index)
        if rec.get("status") not in ("protected", "unchanged") or not rec.get("output"):
            abort(404, "this file has no protected version")
        out = _inside(job, rec["output"])
        if not out.is_file():
            abort(404, "this file has no protected version to download")
        return send_file(out, as_attachment=True, download_name=_download_name(job, index, rec))

    @app.get("/api/jobs/<job_id>/download")
    def download_zip(job_id: str) -> Any:
        job = _job(job_id)
        if job.state != "done" or job.report is None:
            abort(409, "the job has not finished yet")
        path = job.folder / "protected.zip"
        with zip_lock:
            if not path.exists():
                _write_zip(job, path)
        return send_file(path, as_attachment=True, download_name="protected-photos.zip",
                         mimetype="application/zip")

    @app.post("/api/clear")
    def clear() -> Any:
        sid = request.headers.get("X-LB-Session") or request.form.get("session") or request.get_data(as_text=True)
        session = store.get(sid.strip())
        if session is not None:
            store.end(session)
        return jsonify(cleared=session is not None)

    return app


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False) -> Any:
    """Bind ``app`` to ``host:port`` (0 = a free port) with werkzeug's threaded WSGI server.

    Returns the server: ``server.port`` is the bound port, ``serve_forever()`` runs it and
    ``shutdown()`` (from another thread) stops it.

    Raises:
        OSError: the address cannot be bound (in use, not this computer's, ...).
    """
    import socket

    from werkzeug.serving import WSGIRequestHandler
    from werkzeug.serving import make_server as _make_server

    class Handler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # the page polls every 0.7 s: log only failures unless asked for every request
            if log_requests or str(code)[:1] in ("4", "5"):
                super().log_request(code, size)

    # bind here, not in werkzeug, which turns a bind error into sys.exit(1)
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        sock.listen(64)
        return _make_server(bare, port, app, threaded=True, request_handler=Handler, fd=sock.fileno())
    finally:
        sock.close()  # the server holds its own duplicate of the socket


# -- helpers ------------------------------------------------------------------------------

def _now() -> float:
    import time

    return time.time()


def _hostname(host: str) -> str:
    """``host`` of a Host header without its port (``[::1]:80`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    """Whether the ``Origin`` header ``origin`` names this server (``host`` is the Host header)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


def _error(message: str, code: int, **extra: Any) -> Response:
    """A JSON error for the page; one line, never a traceback."""
    resp = jsonify(error=message, **extra)
    resp.status_code = code
    return resp


def _unique(name: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{stem}-{n}{ext}"
    used.add(candidate.lower())
    return candidate


def _check_media(path: Path, name: str, max_pixels: int, max_frames: int) -> str | None:
    """None when ``path`` is a readable photo or video within the limits, else a message."""
    from lbcore.errors import LBError
    from lbcore.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, media_kind, probe_video, read_image

    kind = media_kind(path)
    if kind is None:
        exts = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        return f"{name}: not a photo or video this page takes (file types: {exts})"
    try:
        if kind == "image":
            read_image(path, max_pixels=max_pixels)
        else:
            probe_video(path, max_frames=max_frames)
    except LBError as err:
        msg = str(err).replace(str(path), name)
        msg = msg.replace("(raise it with --max-pixels)", "").replace("(raise it with --max-frames)", "")
        msg = msg.replace("; raise it with --max-frames, or protect a part with --start/--duration", "")
        return msg.strip().rstrip(",;")
    return None


def _record(job: Job, index: int) -> dict[str, Any]:
    if job.report is None or not 0 <= index < len(job.report["files"]):
        abort(404, "no such file in this job")
    rec: dict[str, Any] = job.report["files"][index]
    return rec


def _inside(job: Job, path: str | os.PathLike[str]) -> Path:
    """``path`` resolved, refused unless it lies inside the job's private folder."""
    p = Path(path).resolve()
    root = job.folder.resolve()
    if root not in p.parents:
        abort(404, "not found")
    return p


def _download_name(job: Job, index: int, rec: dict[str, Any]) -> str:
    stem = Path(job.names[index]).stem or f"file-{index + 1}"
    return f"{stem}-protected{Path(rec['output']).suffix}"


def _results(job: Job) -> dict[str, Any]:
    assert job.report is not None
    report = job.report
    threshold = float(report["settings"]["threshold"])
    files = []
    for i, rec in enumerate(report["files"]):
        words = describe_record(rec, threshold)
        if words["verdict"] == "error":
            words["headline"] = job.display(words["headline"])
        ok = rec.get("status") in ("protected", "unchanged") and bool(rec.get("output"))
        has_preview = bool(rec.get("preview")) or (rec.get("kind") == "video" and rec.get("status") == "protected")
        base = f"/api/jobs/{job.id}/files/{i}"
        n_faces = len(rec.get("faces") or []) if rec.get("preview") else 0
        files.append({
            "index": i, "name": job.names[i] if i < len(job.names) else f"file {i + 1}",
            "kind": rec.get("kind", "image"), "status": rec.get("status"), **words,
            "preview_url": f"{base}/preview" if has_preview else None,
            "closeup_urls": [f"{base}/faces/{k}/closeup" for k in range(n_faces)],
            "download_url": f"{base}/download" if ok else None,
            "download_name": _download_name(job, i, rec) if ok else None,
        })
    n_out = sum(1 for f in files if f["download_url"])
    settings = report["settings"]
    from lbcore.apps.web.words import protected_against

    return {
        "results": files,
        "notes": [job.display(n) for n in report.get("notes", [])],
        "protected_against": protected_against(settings.get("extractors")),
        "zip_url": f"/api/jobs/{job.id}/download" if n_out > 1 else None,
        "settings": {"strength": settings.get("strength"), "robust": settings.get("robust"),
                     "eps": settings.get("eps"), "steps": settings.get("steps"),
                     "extractors": settings.get("extractors"), "threshold": threshold},
        "seconds": report.get("seconds"),
    }


def _write_zip(job: Job, path: Path) -> None:
    """Every protected file under its download name, and the report with private paths removed."""
    assert job.report is not None
    tmp = path.with_name(".protected.zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNG/FFV1 are compressed already
        for i, rec in enumerate(job.report["files"]):
            if rec.get("status") in ("protected", "unchanged") and rec.get("output"):
                out = _inside(job, rec["output"])
                if out.is_file():
                    zf.write(out, _download_name(job, i, rec))
        zf.writestr("report.json", job.display(json.dumps(job.report, indent=2, default=str)))
    os.replace(tmp, path)


def _closeup(job: Job, index: int, face: int, rec: dict[str, Any]) -> Path:
    """One face of the original and of the protected file, side by side at 1:1 pixels, without
    landmark dots, so people judge for themselves whether the change shows (PNG).

    The face box grows by half its size on each side; nothing is re-measured.
    """
    import numpy as np

    from lbcore.io import read_image, write_image_atomic

    path = job.folder / "closeups" / f"{index}-{face}.png"
    if path.exists():
        return path
    clean = read_image(_inside(job, rec["input"]), max_pixels=None).rgb
    adv = read_image(_inside(job, rec["output"]), max_pixels=None).rgb
    if clean.shape != adv.shape:
        abort(404, "no close-up for this face")
    x1, y1, x2, y2 = rec["faces"][face]["box"]
    m = 0.5 * max(x2 - x1, y2 - y1)
    xa, xb = max(0, int(x1 - m)), min(clean.shape[1], int(np.ceil(x2 + m)))
    ya, yb = max(0, int(y1 - m)), min(clean.shape[0], int(np.ceil(y2 + m)))
    if xb <= xa or yb <= ya:
        abort(404, "the face box lies outside the photo")
    gap = np.full((yb - ya, max(2, (xb - xa) // 40), 3), 255, np.uint8)
    out = np.concatenate([clean[ya:yb, xa:xb], gap, adv[ya:yb, xa:xb]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image_atomic(path, out)
    return path


def _video_still(job: Job, index: int, rec: dict[str, Any]) -> Path:
    """First frame of the original beside the first frame of the protected video (PNG)."""
    import numpy as np

    from lbcore.io import iter_video_frames, write_image_atomic

    path = job.folder / "stills" / f"{index}.png"
    if path.exists():
        return path

    def first(p: str | os.PathLike[str]) -> Any:
        frames = iter_video_frames(_inside(job, p), max_frames=None)
        try:
            return next(iter(frames))
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    left, right = first(rec["input"]), first(rec["output"])
    if left.shape != right.shape:
        abort(404, "no preview for this video")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image_atomic(path, np.concatenate([left, right], axis=1))
    return path
