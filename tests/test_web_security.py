"""``lb serve``: Host and Origin checks, per-session job limits, session-bound job URLs,
partial uploads, cancelling on close and the queue position (issue 17)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flask")


def _png_bytes(h: int = 32, w: int = 48) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((h, w, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def _session_id(client: Any, **kw: Any) -> str:
    page = client.get("/", **kw)
    assert page.status_code == 200
    m = re.search(rb'data-session="([^"]+)"', page.data)
    assert m
    return m.group(1).decode()


def _post(client: Any, sid: str, files: list[tuple[bytes, str]], headers: dict[str, str] | None = None) -> Any:
    data: dict[str, Any] = {"files": [(io.BytesIO(b), name) for b, name in files]}
    return client.post("/api/jobs", data=data, headers={"X-LB-Session": sid, **(headers or {})},
                       content_type="multipart/form-data")


def _copy_run(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
    out_dir.mkdir(parents=True)
    files = []
    for p in inputs:
        shutil.copy(p, out_dir / p.name)
        files.append({"input": str(p), "output": str(out_dir / p.name), "kind": "image", "status": "unchanged",
                      "faces": []})
    return {"settings": {"threshold": 0.1}, "notes": ["fan: not used (no weights)"], "files": files,
            "summary": {}, "seconds": 0.0}


def _wait(client: Any, url: str, sid: str, timeout: float = 30.0) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = client.get(url, headers={"X-LB-Session": sid}).get_json()
        if s.get("state") in ("done", "failed", None):
            return s
        time.sleep(0.05)
    raise AssertionError("job did not finish")


@pytest.fixture()
def make_app(tmp_path):
    from lbcore.apps.web import create_app

    apps = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("temp_root", tmp_path)
        app = create_app(**kwargs)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["lb_store"].close()


@pytest.mark.parametrize("host", ["127.0.0.1.evil.com", "127.evil.com", "127.0.0.1.evil.com:8765",
                                  "localhost.evil.com", "evil.com", "0.0.0.0", "[::2]:80"])
def test_rebinding_host_names_are_refused(make_app, host):
    client = make_app(run=_copy_run).test_client()
    r = client.get("/", headers={"Host": host})
    assert r.status_code == 400, host
    assert "127.0.0.1 or localhost" in r.get_json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8765", "127.4.5.6:80", "localhost", "LOCALHOST:8765",
                                  "[::1]", "[::1]:8765", "[::ffff:127.0.0.1]:8765"])
def test_loopback_hosts_are_served(make_app, host):
    client = make_app(run=_copy_run).test_client()
    assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_is_loopback_literal_addresses_only():
    from lbcore.apps.web import is_loopback

    for h in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(h), h
    for h in ("127.0.0.1.evil.com", "127.evil.com", "127.", "0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(h), h


def test_state_changing_requests_check_origin(make_app):
    app = make_app(run=_copy_run)
    client = app.test_client()
    host = {"Host": "127.0.0.1:8765"}
    sid = _session_id(client, headers=host)
    for origin in ("http://127.0.0.1.evil.com:8765", "http://evil.com", "null", "http://127.0.0.1:9999"):
        r = _post(client, sid, [(_png_bytes(), "a.png")], headers={**host, "Origin": origin})
        assert r.status_code == 403, origin
        assert "refused" in r.get_json()["error"]
        r = client.post("/api/clear", headers={**host, "Origin": origin, "X-LB-Session": sid})
        assert r.status_code == 403
    r = client.post("/api/jobs", headers={**host, "Sec-Fetch-Site": "cross-site", "X-LB-Session": sid})
    assert r.status_code == 403
    assert app.extensions["lb_store"].get(sid) is not None  # not cleared by the foreign requests
    r = _post(client, sid, [(_png_bytes(), "a.png")], headers={**host, "Origin": "http://127.0.0.1:8765"})
    assert r.status_code == 202, r.get_json()


def test_job_urls_need_the_session(make_app):
    client = make_app(run=_copy_run).test_client()
    sid = _session_id(client)
    other = _session_id(client)
    url = _post(client, sid, [(_png_bytes(), "a.png")]).get_json()["url"]
    assert _wait(client, url, sid)["state"] == "done"
    for path in (url, url + "/files/0/download", url + "/download"):
        assert client.get(path).status_code == 404, path  # the id alone is not enough
        assert client.get(path, headers={"X-LB-Session": other}).status_code == 404, path
    r = client.get(url + "/files/0/download", headers={"X-LB-Session": sid})
    assert r.status_code == 200 and r.data == _png_bytes()


def test_queued_jobs_per_session_are_capped(make_app):
    gate = threading.Event()

    def slow(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
        gate.wait(20)
        return _copy_run(inputs, out_dir)

    client = make_app(run=slow, max_queued=2).test_client()
    sid = _session_id(client)
    try:
        assert _post(client, sid, [(_png_bytes(), "a.png")]).status_code == 202
        assert _post(client, sid, [(_png_bytes(), "b.png")]).status_code == 202
        r = _post(client, sid, [(_png_bytes(), "c.png")])
        assert r.status_code == 429
        assert "2 unfinished job(s)" in r.get_json()["error"] and "wait for one to finish" in r.get_json()["error"]
        # another page is not starved by this one
        assert _post(client, _session_id(client), [(_png_bytes(), "d.png")]).status_code == 202
    finally:
        gate.set()


def test_queue_position_is_reported(make_app):
    gate = threading.Event()

    def slow(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
        gate.wait(20)
        return _copy_run(inputs, out_dir)

    client = make_app(run=slow).test_client()
    a, b, c = (_session_id(client) for _ in range(3))
    try:
        _post(client, a, [(_png_bytes(), "a.png")])
        _post(client, b, [(_png_bytes(), "b.png")])
        url = _post(client, c, [(_png_bytes(), "c.png")]).get_json()["url"]
        s = client.get(url, headers={"X-LB-Session": c}).get_json()
        assert s["state"] == "queued" and s["position"] == 2
    finally:
        gate.set()
    assert _wait(client, url, c)["position"] == 0


def test_a_bad_file_does_not_reject_the_good_ones(make_app):
    calls: list[list[str]] = []

    def run(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
        calls.append([p.name for p in inputs])
        return _copy_run(inputs, out_dir)

    client = make_app(run=run).test_client()
    sid = _session_id(client)
    r = _post(client, sid, [(_png_bytes(), "good.png"), (b"just text", "notes.txt"), (_png_bytes(), "b.png")])
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert [x["name"] for x in body["rejected"]] == ["notes.txt"]
    assert body["rejected"][0]["problem"].startswith("notes.txt: not a photo or video")
    s = _wait(client, body["url"], sid)
    assert s["state"] == "done" and [x["name"] for x in s["results"]] == ["good.png", "b.png"]
    assert calls == [["good.png", "b.png"]]
    # only bad files: refused as before, with the reason per file
    r = _post(client, sid, [(b"just text", "notes.txt")])
    assert r.status_code == 400 and r.get_json()["rejected"][0]["name"] == "notes.txt"


def test_closing_the_page_cancels_its_running_job(make_app):
    """The page's goodbye (/api/clear) stops its running job at the next progress step."""
    started, stopped = threading.Event(), threading.Event()
    steps = []

    def endless(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
        started.set()
        try:
            for i in range(2000):  # 100 s unless cancelled
                progress(f"{inputs[0]}: {i}/2000 frames")
                steps.append(i)
                time.sleep(0.05)
        finally:
            stopped.set()
        return _copy_run(inputs, out_dir)

    app = make_app(run=endless)
    client = app.test_client()
    sid = _session_id(client)
    _post(client, sid, [(_png_bytes(), "a.png")])
    assert started.wait(10)
    t0 = time.monotonic()
    client.post("/api/clear", data=sid, content_type="text/plain")
    assert stopped.wait(5), "the job kept running after its page was closed"
    assert time.monotonic() - t0 < 2 and len(steps) < 100
    # the worker is free for the next page at once
    sid2 = _session_id(client)
    app.extensions["lb_store"].run = _copy_run
    assert _wait(client, _post(client, sid2, [(_png_bytes(), "b.png")]).get_json()["url"], sid2)["state"] == "done"


def test_developer_notes_are_behind_a_details_toggle(make_app):
    client = make_app(run=_copy_run).test_client()
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<details id="details"[^>]*>\s*<summary>Details', html)
    js = client.get("/static/app.js").get_data(as_text=True)
    assert 'headers: Object.assign({ "X-LB-Session": session }' in js  # job URLs carry the session
    assert "button.remove" in js or 'className = "remove"' in js


def test_other_host_warning_is_printed_once(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # 192.0.2.1 is reserved for documentation: binding fails here, after the warning
    res = subprocess.run([sys.executable, "-m", "lbcore", "serve", "--host", "192.0.2.1", "--port", "0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2
    assert (res.stdout + res.stderr).count("listening on 192.0.2.1: anyone who can reach") == 1, res.stderr


def test_page_script_parses():
    """The page's script is valid JavaScript (the browser test, which needs Chromium, runs it)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot check the page script's syntax")
    script = Path(__file__).resolve().parents[1] / "lbcore" / "apps" / "web" / "static" / "app.js"
    res = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_photos_progress_line_is_not_counted_as_a_finished_file(make_app):
    gate = threading.Event()

    def run(inputs: list[Path], out_dir: Path, progress: Any = None, **options: Any) -> dict[str, Any]:
        progress(f"{inputs[0]}: 1 face(s) found; protecting (20 attack steps)")
        gate.wait(20)
        return _copy_run(inputs, out_dir)

    client = make_app(run=run).test_client()
    sid = _session_id(client)
    url = _post(client, sid, [(_png_bytes(), "a.png"), (_png_bytes(), "b.png")]).get_json()["url"]
    try:
        for _ in range(100):
            s = client.get(url, headers={"X-LB-Session": sid}).get_json()
            if "face(s) found" in s["message"]:
                break
            time.sleep(0.05)
        assert s["files_done"] == 0 and s["message"] == "a.png: 1 face(s) found; protecting (20 attack steps)"
    finally:
        gate.set()
