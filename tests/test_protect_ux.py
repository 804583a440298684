"""``lb protect`` as a new user meets it (issue 17): Ctrl-C, named weights, exit codes, option
ranges, the video summary, several input folders, odd file names, the example photo, progress."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

FAST = ["--steps", "1", "--no-compression-check", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _fresh_weights(monkeypatch):
    """``--weights`` pairs are remembered per process: each test starts with none."""
    monkeypatch.setattr("lbcore.weights._explicit", {})


def _lb(*args: Any) -> Any:
    from lbcore.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, shared):
    """Frames 100-103 of the shared clip (one face each)."""
    from lbcore.io import VideoWriter, iter_video_frames_timed, probe_video

    src = shared / "data" / "video" / "short_hamilton_clip.mp4"
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    with VideoWriter(path, probe_video(src).fps, codec="ffv1") as w:
        for frame, _ in iter_video_frames_timed(src, start=100, stop=104):
            w.write(frame)
    return path


# -- weights the user names ------------------------------------------------------------------

def test_named_weights_that_cannot_be_used_fail_with_exit_3(tmp_path, shared):
    photo = shared / "data" / "photos" / "obama-240p.jpg"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(os.urandom(1000))
    for pair, words in ((f"hr18-wflw={bad}", str(bad)), ("foo=/nonexistent/x.pth", "/nonexistent/x.pth"),
                        (f"foo={bad}", "no installed extractor uses weights named 'foo'")):
        res = _lb("protect", photo, "-o", tmp_path / "out", "--weights", pair, *FAST)
        assert res.exit_code == 3, (pair, res.output)
        assert len(_lines(res.output)) == 1 and words in res.output, res.output
        assert not list((tmp_path / "out").glob("obama-240p.*"))  # never the demo model instead


def test_notes_are_never_cut_mid_sentence():
    from lbcore.apps.protection import default_extractor_specs
    from lbcore.errors import WeightsError
    from lbcore.plugins import Component

    long = "no weights for x:" + ",".join(f"key{i}=value{i}" for i in range(30)) + " (no such layout; see docs)"

    class PM:
        def components(self, kind: str, sort: bool = True) -> dict[str, Any]:
            return {"x": Component("x", kind, lambda: None, "lb-x")}

        def build(self, kind: str, name: str) -> Any:
            raise WeightsError(long + "; put it in ~/.cache")

    _, notes = default_extractor_specs(PM())
    assert notes[0] == f"x: not used ({long}; put it in ~/.cache)"


# -- one-line errors and ranges ----------------------------------------------------------------

def test_output_that_is_the_input_file_is_one_line(tmp_path, shared):
    photo = tmp_path / "a.jpg"
    shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", photo)
    res = _lb("protect", photo, "-o", photo, *FAST)
    assert res.exit_code == 2, res.output
    assert len(_lines(res.output)) == 1 and "Traceback" not in res.output
    assert "a.jpg: -o/--out names the output folder" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("option", [["--eps", "-5"], ["--eps", "0"], ["--eps", "300"], ["--steps", "0"],
                                    ["--min-face", "0"], ["--threshold", "-1"], ["--crf", "99"],
                                    ["--batch-size", "0"], ["--max-frames", "0"], ["--max-pixels", "-3"],
                                    ["--seed", "-1"], ["--start", "-1"], ["--duration", "0"]])
def test_numbers_out_of_range_are_refused(tmp_path, option):
    res = _lb("protect", tmp_path / "x.png", "-o", tmp_path / "o", *option)
    assert res.exit_code == 2, res.output
    lines = _lines(res.output)
    assert len(lines) == 1 and option[0] in lines[0] and lines[0].startswith("lb: error:"), res.output


# -- the report and the exit status --------------------------------------------------------------

def test_video_summary_counts_the_video_faces_and_writes_preview_frames(clip, tmp_path):
    res = _lb("protect", clip, "-o", tmp_path / "o", "--preview", *FAST, "--batch-size", "4", "--min-face", "20")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    rec = report["files"][0]
    assert rec["faces_protected"] > 0
    assert report["summary"]["faces"] == rec["faces_protected"] == report["summary"]["video_faces"]
    last = _lines(res.output)[-1]
    assert last.startswith(f"{rec['faces_protected']} face(s) protected (0 in photos, "), last
    assert "0 face(s) protected" not in res.output
    # one measured batch (4 frames, batch 4): its first frame with a face is the preview
    assert rec["previews"] == [str(tmp_path / "o" / "previews" / "clip.frame0.png")]
    import cv2

    side = cv2.imread(rec["previews"][0])
    assert side is not None and side.shape[1] >= 2 * 640  # clean | protected, then the face at 1:1


def test_video_previews_are_the_first_middle_and_last_measured_frames(clip, tmp_path):
    from lbcore.apps.protection import protect

    report = protect([clip], tmp_path / "o", extractors=("fan:weights=none,width=16,landmarks=68,resolution=64",),
                     steps=1, check_compression=False, device="cpu", batch_size=1, report_every=1, preview=True,
                     min_face=20)
    names = [Path(p).name for p in report["files"][0]["previews"]]
    assert names == ["clip.frame0.png", "clip.frame2.png", "clip.frame3.png"]


def test_part_of_a_video_with_start_and_duration(tmp_path, shared):
    from lbcore.io import probe_video

    src = shared / "data" / "video" / "short_hamilton_clip.mp4"
    res = _lb("protect", src, "-o", tmp_path / "all", "--max-frames", "30", *FAST)
    assert res.exit_code == 1
    (line,) = [ln for ln in _lines(res.output) if "ERROR" in ln]
    assert line.count("--max-frames") == 1 and "275 frames (9.2 s)" in line and "(1.0 s at 29.97 fps" in line, line
    assert "--start/--duration" in line
    res = _lb("protect", src, "-o", tmp_path / "part", "--start", "3.4", "--duration", "0.1", "--max-frames", "30",
              "--min-face", "20", *FAST)
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "part" / "report.json").read_text())["files"][0]
    info = probe_video(tmp_path / "part" / "short_hamilton_clip.mkv")
    assert rec["frames"] == info.frame_count == 3 and rec["part_frames"] == [102, 105]
    assert rec["faces_protected"] == 3
    assert info.duration == pytest.approx(3 / 29.97, abs=0.01)  # starts at 0 in its own file
    res = _lb("protect", src, "-o", tmp_path / "late", "--start", "60", *FAST)
    assert res.exit_code == 1 and "--start 60 s is past the end of the video (9.2 s)" in res.output


def test_a_clip_whose_times_are_all_zero_is_repaired(tmp_path):
    import numpy as np

    from lbcore.io import VideoWriter, iter_video_frames_timed, probe_video

    out = tmp_path / "zero.mkv"
    with VideoWriter(out, 25, codec="ffv1") as w:
        for i in range(5):
            w.write(np.full((16, 16, 3), 10 * i, np.uint8), 0.0)
    assert probe_video(out).frame_count == 5
    times = [float(t) for _, t in iter_video_frames_timed(out)]
    assert times == pytest.approx([0, 0.04, 0.08, 0.12, 0.16], abs=1e-3)  # were 1/90000 s apart


def test_require_broken_exit_4(tmp_path, shared):
    photo = shared / "data" / "photos" / "obama-240p.jpg"
    # a budget far below one grey level: the written photo is unchanged, no face is broken
    args = ["protect", photo, "-o", tmp_path / "o", "--eps", "0.01", "--min-face", "20", *FAST]
    res = _lb(*args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["summary"]["faces"] >= 1 and report["summary"]["faces_not_broken"] >= 1
    res = _lb(*args, "--require-broken")
    assert res.exit_code == 4, res.output
    assert "not broken" in _lines(res.output)[-1]


def test_ctrl_c_stops_fast_exits_130_keeps_the_frames_done_and_a_rerun_continues(tmp_path, shared):
    """SIGINT during a video: the process ends within seconds with 130; report.json lists the
    finished photo, the interrupted video and what had not started; the video's finished frames
    wait in a hidden partial that the rerun copies (bit-exact) and continues from."""
    from lbcore.io import VideoWriter, iter_video_frames, iter_video_frames_timed, probe_video

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", src / "a.jpg")
    shutil.copy(shared / "data" / "photos" / "obama-240p.jpg", src / "z.jpg")
    video = src / "m.mkv"
    full = shared / "data" / "video" / "short_hamilton_clip.mp4"
    with VideoWriter(video, probe_video(full).fps, codec="ffv1") as w:
        for frame, _ in iter_video_frames_timed(full, start=100, stop=140):
            w.write(frame)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lbcore", "protect", src / "a.jpg", video, src / "z.jpg", "-o", out,
           "--batch-size", "2", "--min-face", "20", "--format", "png", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Ctrl-C as on a terminal: a run started in the background by a non-interactive shell (CI
    # scripts with `&`) inherits SIGINT ignored, and Python then keeps ignoring it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "m.mkv: 4/40 frames" in line:
                break
        else:
            raise AssertionError("no video progress")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert took < 10, took  # (about 2 s on the 2-core CI machine under load; it was about 20)
    assert "Aborted!" not in stderr and "run the same command again" in stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["protected", "interrupted", "not started"]
    assert report["interrupted"] is True
    assert (out / "a.png").is_file() and not (out / "m.mkv").exists()
    partial = out / ".m.mkv.partial.mkv"
    kept = list(iter_video_frames(partial))
    assert 4 <= len(kept) < 40
    # the rerun continues: the kept frames unchanged, the rest protected, the partial gone
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"continuing after the {len(kept)} frames" in res.stderr
    rec = json.loads((out / "report.json").read_text())["files"][1]
    assert rec["status"] == "protected" and rec["frames"] == 40
    frames = list(iter_video_frames(out / "m.mkv"))
    assert len(frames) == 40 and all((a == b).all() for a, b in zip(kept, frames, strict=False))
    assert not partial.exists() and not list(out.glob(".m.mkv.partial*"))


# -- inputs ------------------------------------------------------------------------------------

def _png(path: Path) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 100, np.uint8))
    return path


def test_several_folders_are_mirrored_under_their_names(tmp_path):
    from lbcore.io import iter_inputs

    _png(tmp_path / "faces68" / "photo.png")
    _png(tmp_path / "photos" / "photo.png")
    _png(tmp_path / "photos" / "sub" / "x.png")
    entries = list(iter_inputs([tmp_path / "faces68", tmp_path / "photos"]))
    assert [(str(e.rel), e.kind) for e in entries] == [
        ("faces68/photo.png", "image"), ("photos/photo.png", "image"), ("photos/sub/x.png", "image")]
    # one folder: its contents go straight into the output folder, as before
    assert [str(e.rel) for e in iter_inputs([tmp_path / "photos"])] == ["photo.png", "sub/x.png"]


def test_a_file_given_twice_is_protected_once(tmp_path):
    from lbcore.io import iter_inputs

    a = _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "in" / "b.png")
    entries = list(iter_inputs([tmp_path / "in", a]))
    assert [(str(e.rel), e.kind) for e in entries] == [("in/a.png", "image"), ("in/b.png", "image")]
    entries = list(iter_inputs([a, tmp_path / "in"]))
    assert [(str(e.rel), e.kind) for e in entries] == [("a.png", "image"), ("in/b.png", "image")]
    assert [e.kind for e in iter_inputs([a, a])] == ["image"]


def test_newlines_in_names_are_escaped(tmp_path):
    from lbcore.io import display_path, iter_inputs

    assert display_path("bad\nname\t.png") == "bad\\nname\\t.png"
    (tmp_path / "x\ny.txt").write_bytes(b"")
    (err,) = list(iter_inputs([tmp_path / "x\ny.txt"]))
    assert err.kind == "error" and "\n" not in err.error and "x\\ny.txt" in err.error


def test_every_symlink_loop_gets_the_same_message(tmp_path):
    from lbcore.io import iter_inputs

    root = tmp_path / "in"
    _png(root / "a.png")
    os.symlink("self.png", root / "self.png")  # a self-loop
    os.symlink("two", root / "one")  # a loop of two links, names without a photo's extension
    os.symlink("one", root / "two")
    (root / "deep").mkdir()
    os.symlink("..", root / "deep" / "up")  # a folder link back up
    entries = {str(e.rel): e for e in iter_inputs([root])}
    msgs = {rel: e.error.split(": ", 1)[1] for rel, e in entries.items() if e.error}
    assert set(msgs) == {"self.png", "one", "two", "deep/up"}, msgs
    assert set(msgs.values()) == {"symbolic link loop; skipped"}, msgs


def test_example_input_stays_out_of_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = _lb("protect", "--example", "-o", "out", *FAST)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]
    assert f"example input: {tmp_path / 'cache'}" in res.output
    assert (tmp_path / "out" / "astronaut.png").is_file()


def test_photos_report_progress_while_they_run(tmp_path, shared):
    from lbcore.apps.protection import protect

    lines: list[str] = []
    photo = shared / "data" / "photos" / "obama-240p.jpg"
    protect([photo], tmp_path / "o", steps=1, check_compression=False, min_face=20, progress=lines.append)
    assert lines[0] == f"{photo}: 1 face(s) found; protecting (1 attack steps)", lines
    assert lines[-1] == f"{photo}: protected"


def test_readme_describes_the_terminal_output():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "a terminal\ntable" not in readme and "terminal table" not in readme
    for words in ("--require-broken", "130", "--start", ".lb.json"):
        assert words in readme, words


def test_ctrl_c_while_loading_the_models_exits_130(tmp_path, monkeypatch):
    import lbcore.apps.protection as protection

    def interrupted(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(protection, "protect", interrupted)
    res = _lb("protect", tmp_path / "x.png", "-o", tmp_path / "o")
    assert res.exit_code == 130 and "Aborted!" not in res.output
    assert _lines(res.output) == ["lb: interrupted before any file was protected"]
