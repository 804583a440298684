"""The protect report in plain words, for the web page.

Pure presentation: every number comes from a record of :func:`lbcore.apps.protection.protect`'s
report; nothing here measures anything. NME is the mean landmark displacement divided by the
distance between the outer eye corners, so ``NME * 100`` reads as "per cent of the eye
distance"; a face counts as protected (the paper's "broken") when it is above the report's
threshold for every attacked extractor.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_record", "compression_label", "extractor_label", "protected_against"]

_COMPRESSION_LABELS = {
    "jpeg:quality=75": "JPEG re-compression at quality 75 (a typical upload)",
    "jpeg:quality=50": "JPEG re-compression at quality 50 (heavy)",
    "c2": "video compression (MPEG-4 then H.264, the paper's C2)",
    "c": "video compression (MPEG-4, the paper's C)",
}


def compression_label(spec: str) -> str:
    """A reader's name for a re-compression check spec such as ``jpeg:quality=75``."""
    if spec in _COMPRESSION_LABELS:
        return _COMPRESSION_LABELS[spec]
    if spec.startswith("jpeg:quality="):
        return f"JPEG re-compression at quality {spec.split('=', 1)[1]}"
    return f"re-compression {spec}"


def extractor_label(spec: str) -> str:
    """A short name for an extractor spec (``fan:weights=none,width=16`` -> ``fan``)."""
    return spec.split(":", 1)[0]


# What the landmark models behind known weights files are, for people who never heard of them.
_MODEL_WORDS = {
    "2dfan4": "2D-FAN4, the landmark model DeepFaceLab, faceswap and FaceFusion use",
    "fan-demo": "the small demonstration model that ships with this tool",
    "mediapipe-face-landmark": "Google's MediaPipe Face Mesh",
    "mediapipe-face-landmark-with-attention": "MediaPipe's Attention Mesh",
    "dlib68": "dlib's 68-point predictor, which faceswap, face_recognition and many scripts use",
    "faceapi-landmark-68": "face-api.js's landmark model, which many web pages and browser apps use",
}


def protected_against(labels: list[str] | None) -> str:
    """One sentence naming the landmark models a run protected against (``fan (2dfan4)`` ->
    the model's plain name)."""
    names = []
    for label in labels or []:
        weights = label[label.find("(") + 1:-1] if label.endswith(")") and "(" in label else label
        names.append(_MODEL_WORDS.get(weights, _MODEL_WORDS.get(label, f"the landmark model {label}")))
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Protected against {listed}."


def _pct(nme: float) -> str:
    return f"{nme * 100:.1f}%"


def _quality_words(ssim_box: float | None, psnr: float | None) -> str:
    if ssim_box is None:
        return ""
    if ssim_box >= 0.98:
        look = "the change is hard to see"
    elif ssim_box >= 0.93:
        look = "the change is faint but visible up close"
    else:
        look = "the change is visible"
    extra = f", PSNR {psnr:.1f} dB" if psnr is not None else ""
    return f"Image quality in the face: {look} (SSIM {ssim_box:.3f}, 1 = identical{extra})."


def _face_lines(face: dict[str, Any], threshold: float, several: bool) -> tuple[list[str], bool]:
    """Sentences for one face and whether every attacked extractor is broken."""
    lines: list[str] = []
    ok = True
    for spec, e in face.get("extractors", {}).items():
        who = f"{extractor_label(spec)}: " if several else ""
        tag = "" if e.get("attacked", True) else " (not attacked; shows how the protection carries over)"
        if e.get("attacked", True):
            ok = ok and bool(e.get("broken"))
        if e.get("nme") is None:
            lines.append(f"{who}could not be measured: {e.get('note') or 'NME undefined'}{tag}")
            continue
        verdict = "protected" if e.get("broken") else f"not enough (needs over {_pct(threshold)})"
        lines.append(f"{who}landmarks moved by {_pct(e['nme'])} of the eye distance — {verdict}{tag}")
        for check, value in (e.get("after_compression") or {}).items():
            still = "still protected" if value > threshold else "no longer protected"
            lines.append(f"{who}after {compression_label(check)}: moved by {_pct(value)} — {still}")
    quality = _quality_words(face.get("ssim_box"), face.get("psnr"))
    if quality:
        lines.append(quality)
    return lines, ok


def describe_record(record: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One file's report record as a verdict, a headline and lines of plain text.

    Args:
        record: one entry of ``report["files"]``.
        threshold: the report's NME threshold (``report["settings"]["threshold"]``).

    Returns:
        ``{"verdict": protected|partly|weak|unchanged|error, "headline": str,
        "faces": [[str, ...], ...], "lines": [str, ...]}`` (``faces`` per face for photos,
        ``lines`` for the whole file).
    """
    status = record.get("status")
    if status == "error":
        return {"verdict": "error", "headline": f"Could not protect this file: {record.get('error')}",
                "faces": [], "lines": []}
    if record.get("kind") == "video":
        return _describe_video(record, threshold)
    faces = record.get("faces") or []
    small = record.get("skipped_small_faces") or []
    lines = []
    if small:
        lines.append(f"{len(small)} face(s) too small to protect were left as they are.")
    if not faces:
        return {"verdict": "unchanged", "faces": [], "lines": lines,
                "headline": "No face found: the photo was left unchanged."}
    per_face = []
    n_ok = 0
    several = len({k for f in faces for k in f.get("extractors", {})}) > 1
    for face in faces:
        face_lines, ok = _face_lines(face, threshold, several)
        per_face.append(face_lines)
        n_ok += ok
    if n_ok == len(faces):
        verdict = "protected"
        headline = f"{len(faces)} face(s) protected."
    elif n_ok:
        verdict = "partly"
        headline = f"{n_ok} of {len(faces)} face(s) protected; try a higher strength for the others."
    else:
        verdict = "weak"
        headline = f"{len(faces)} face(s) changed, but not enough to count as protected; try a higher strength."
    return {"verdict": verdict, "headline": headline, "faces": per_face, "lines": lines}


def _describe_video(record: dict[str, Any], threshold: float) -> dict[str, Any]:
    n = record.get("faces_protected") or 0
    frames = record.get("frames")
    if not n:
        return {"verdict": "unchanged", "faces": [], "lines": [],
                "headline": f"No face found in {frames} frames: the video was left unchanged."}
    lines = []
    ok = True
    for spec, e in (record.get("extractors") or {}).items():
        broken = e.get("broken_fraction", 0.0)
        if e.get("attacked", True):
            ok = ok and broken >= 0.5
        lines.append(
            f"{extractor_label(spec)}: landmarks moved by {_pct(e['nme_mean'])} of the eye distance on average; "
            f"{broken * 100:.0f}% of the measured faces protected (over {_pct(threshold)})")
    if not record.get("extractors"):
        lines.append("The report has no landmark measurements for this clip (it measures a sample of the frames).")
    if record.get("ssim_mean") is not None:
        lines.append(f"Image quality: SSIM {record['ssim_mean']:.3f} on average (1 = identical).")
    lines.append(f"Audio: {record.get('audio', 'none')}.")
    verdict = "protected" if ok else "weak"
    headline = f"{frames} frames, {n} face(s) protected." if ok else (
        f"{frames} frames: faces changed, but most not enough to count as protected; try a higher strength.")
    return {"verdict": verdict, "headline": headline, "faces": [], "lines": lines}
