"""Annotation readers: real files in ../shared/data, malformed files with line numbers, and
write/read round trips (hypothesis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbcore.errors import InputError
from lbcore.io.annotations import (
    FaceRecord,
    box_from_landmarks,
    load_annotations,
    read_pts,
    write_dlib_xml,
    write_pts,
    write_wflw_list,
)
from lbcore.schemes import IBUG68, WFLW98

# --------------------------------------------------------------------------- real data


def test_faces68_folder(shared):
    folder = shared / "data" / "faces68"
    records = load_annotations(folder)
    names = [r.image_path.name for r in records]
    assert names == ["breakingbad.jpg", "einstein.jpg", "lenna.png", "takeo.ppm"]
    for r in records:
        assert r.image_path.is_file()
        assert r.landmarks.shape == (68, 2) and r.scheme == IBUG68
        np.testing.assert_array_equal(r.box, box_from_landmarks(r.landmarks))
        assert r.landmarks[36, 0] < r.landmarks[45, 0]  # subject's right eye on the image left
    lenna = records[2]
    # first point of lenna.pts is "200.534 268.621" (1-based) -> 0-based
    np.testing.assert_allclose(lenna.landmarks[0], [199.534, 267.621])
    # the 2 people of breakingbad: only the right one is annotated
    assert records[0].box[0] > 1920 / 2
    # takeo: a close-up, the face fills most of the 150x225 image
    assert records[3].box[2] - records[3].box[0] > 0.6 * 150


def test_single_pts_file_finds_its_image(shared):
    (r,) = load_annotations(shared / "data" / "faces68" / "takeo.pts")
    assert r.image_path.name == "takeo.ppm"
    zero_based = read_pts(shared / "data" / "faces68" / "takeo.pts", pts_one_based=False)
    np.testing.assert_allclose(r.landmarks, zero_based - 1.0)


def test_dlib_xml_files(shared):
    folder = shared / "data" / "dlib_faces"
    train = load_annotations(folder / "training_with_face_landmarks.xml")
    test = load_annotations(folder / "testing_with_face_landmarks.xml", format="dlib-xml")
    assert (len(train), len(test)) == (18, 25)
    first = train[0]
    assert first.image_path == folder / "2007_007763.jpg" and first.image_path.is_file()
    # <box top='90' left='194' width='37' height='37'>, <part name='00' x='201' y='107'/>
    np.testing.assert_array_equal(first.box, [194, 90, 231, 127])
    np.testing.assert_array_equal(first.landmarks[0], [201, 107])
    assert first.source.endswith("training_with_face_landmarks.xml:11")
    for r in train + test:
        assert r.image_path.is_file()
        assert r.landmarks.shape == (68, 2) and r.scheme == IBUG68
        # dlib's points lie around its box (the box is the inner face; the chin may stick out)
        lo, hi = r.landmarks.min(0), r.landmarks.max(0)
        size = r.box[2] - r.box[0]
        assert np.all(lo > r.box[:2] - 0.5 * size) and np.all(hi < r.box[2:] + 0.5 * size)
    assert len({r.image_path for r in train + test}) == 9


def test_folder_without_annotations(shared, tmp_path):
    import shutil

    shutil.copy(shared / "data" / "faces68" / "takeo.ppm", tmp_path / "a.ppm")
    shutil.copy(shared / "data" / "faces68" / "takeo.ppm", tmp_path / "b.ppm")
    shutil.copy(shared / "data" / "faces68" / "takeo.pts", tmp_path / "b.pts")
    (tmp_path / "orphan.pts").write_text("not read")
    (tmp_path / "notes.txt").write_text("not an image")
    a, b = load_annotations(tmp_path)
    assert a.image_path.name == "a.ppm" and a.box is None and a.landmarks is None
    assert b.image_path.name == "b.ppm" and b.landmarks.shape == (68, 2)


# --------------------------------------------------------------------------- malformed files

PTS_OK = "version: 1\nn_points: 3\n{\n1 2\n3 4\n5 6\n}\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (PTS_OK.replace("3 4", "3 four"), 5, "'four' is not a number"),
        (PTS_OK.replace("3 4", "3 4 5"), 5, "expected two numbers"),
        (PTS_OK.replace("5 6\n", ""), 6, "2 points, but the header says n_points=3"),
        (PTS_OK.replace("5 6\n", "5 6\n7 8\n"), 7, "more than n_points=3"),
        (PTS_OK.replace("}\n", ""), 6, "no '}' closing"),
        (PTS_OK.replace("version: 1", "version: 2"), 1, "unsupported pts version"),
        (PTS_OK.replace("n_points: 3", "n_points: x"), 2, "n_points must be a positive integer"),
        (PTS_OK.replace("n_points: 3\n", ""), 2, "'{' before any 'n_points:'"),
        (PTS_OK.replace("n_points: 3", "n_points 3"), 2, "expected a 'key: value' header"),
        (PTS_OK + "extra\n", 8, "unexpected text after '}'"),
        (PTS_OK.replace("1 2", "1 nan"), 4, "not a finite number"),
        ("version: 1\nn_points: 3\n", 2, "no '{' opening"),
    ],
)
def test_pts_errors_name_file_and_line(tmp_path, text, line, message):
    f = tmp_path / "face.pts"
    f.write_text(text)
    with pytest.raises(InputError) as info:
        load_annotations(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}:{line}: "), msg
    assert message in msg
    assert "\n" not in msg


def _wflw_line(rng: np.random.Generator, path: str = "a/b.jpg") -> str:
    coords = " ".join(f"{v:.3f}" for v in rng.uniform(0, 100, 196))
    return f"{coords} 1 2 90 95 0 1 0 0 1 0 {path}"


def test_wflw_reader_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = [_wflw_line(rng), _wflw_line(rng, "c/d.png")]
    f = tmp_path / "list_98pt_rect_attr_test.txt"
    f.write_text("\n".join(good) + "\n\n")
    a, b = load_annotations(f)
    assert a.image_path == tmp_path / "a/b.jpg" and b.image_path == tmp_path / "c/d.png"
    assert a.scheme == WFLW98 and a.landmarks.shape == (98, 2)
    np.testing.assert_array_equal(a.box, [1, 2, 90, 95])
    assert a.attributes == (0, 1, 0, 0, 1, 0)
    np.testing.assert_allclose(a.landmarks[0], [float(t) for t in good[0].split()[:2]])
    assert load_annotations(f, "wflw", image_root="/data/WFLW_images")[0].image_path == Path(
        "/data/WFLW_images/a/b.jpg"
    )

    cases = [
        (good[1].rsplit(" ", 2)[0] + " x.jpg", "expected 207 fields .* got 206"),  # drops a flag
        (good[1].replace(" 1 2 90 95 ", " 1 2 x 95 "), "box: 'x' is not a number"),
        (good[1].replace(" 1 2 90 95 ", " 91 2 90 95 "), "x_max < x_min"),
        ("12 nope " + " ".join(good[1].split()[2:]), "landmark coordinate: 'nope'"),
        (good[1].replace(" 0 1 0 0 1 0 ", " 0 1 0 0 2 0 "), "attribute flags must be 0 or 1"),
        (good[1] + " extra", "expected 207 fields"),
    ]
    for bad, message in cases:
        f.write_text(good[0] + "\n\n" + bad + "\n")
        with pytest.raises(InputError, match=message) as info:
            load_annotations(f, "wflw")
        assert str(info.value).startswith(f"{f}:3: "), str(info.value)


XML_OK = """<?xml version='1.0' encoding='ISO-8859-1'?>
<dataset>
<images>
  <image file='x.jpg'>
    <box top='10' left='20' width='30' height='40'>
      <part name='01' x='25' y='30'/>
      <part name='00' x='21' y='22'/>
      <part name='02' x='40' y='44'/>
    </box>
    <box top='1' left='2' width='3' height='4' ignore='1'/>
    <box top='5' left='6' width='7' height='8'/>
  </image>
</images>
</dataset>
"""


def test_dlib_xml_reader_details(tmp_path):
    f = tmp_path / "faces.xml"
    f.write_text(XML_OK)
    a, b = load_annotations(f)  # the ignored box is skipped
    np.testing.assert_array_equal(a.box, [20, 10, 50, 50])
    np.testing.assert_array_equal(a.landmarks, [[21, 22], [25, 30], [40, 44]])  # by part name
    assert a.source == f"{f}:5"
    assert b.landmarks is None and b.scheme is None
    np.testing.assert_array_equal(b.box, [6, 5, 13, 13])
    absent = XML_OK.replace("x='40' y='44'", "x='2147483647' y='2147483647'")
    f.write_text(absent)
    assert np.isnan(load_annotations(f)[0].landmarks[2]).all()


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("<part name='00' x='21'", "<part name='00' x='2.5'", 7, "x='2.5' is not an integer"),
        ("<box top='10' left='20'", "<box left='20'", 5, "<box> has no 'top'"),
        ("<part name='02' x='40' y='44'/>", "<part name='02' x='40' y='44'>", 9, "malformed XML"),
        ("<part name='02'", "<part name='00'", 8, "name '00' repeated"),
        ("<image file='x.jpg'>", "<image>", 4, "<image> has no 'file'"),
        ("<box top='5' left='6' width='7' height='8'/>",
         "<box top='5' left='6' width='7' height='8'><part name='a' x='1' y='1'/></box>", 11,
         "box has parts"),
        ("width='30'", "width='-3'", 5, "negative size"),
    ],
)
def test_dlib_xml_errors_name_file_and_line(tmp_path, old, new, line, message):
    assert old in XML_OK
    f = tmp_path / "faces.xml"
    f.write_text(XML_OK.replace(old, new))
    with pytest.raises(InputError, match=message) as info:
        load_annotations(f)
    assert str(info.value).startswith(f"{f}:{line}: "), str(info.value)


def test_dlib_xml_unknown_encoding_is_one_line(tmp_path):
    # (found by the mutation property test: a declaration naming an encoding Python does not know)
    f = tmp_path / "faces.xml"
    f.write_text("<?xml version='1.0' encoding='SO-8859-1'?>\n<dataset><images></images></dataset>\n")
    with pytest.raises(InputError, match="unknown encoding") as info:
        load_annotations(f)
    assert str(info.value).startswith(f"{f}:1: malformed XML"), str(info.value)


def test_dlib_xml_refuses_entities(tmp_path):
    bomb = (
        "<?xml version='1.0'?>\n"
        '<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n]>\n'
        "<dataset><images><image file='&lol2;'/></images></dataset>\n"
    )
    f = tmp_path / "bomb.xml"
    f.write_text(bomb)
    with pytest.raises(InputError, match="entity declarations are not accepted") as info:
        load_annotations(f)
    assert str(info.value).startswith(f"{f}:2: ")
    external = "<?xml version='1.0'?>\n<!DOCTYPE d SYSTEM 'http://example.invalid/x.dtd'>\n<d/>\n"
    f.write_text(external)
    with pytest.raises(InputError, match="not accepted"):
        load_annotations(f)


def test_load_annotations_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load_annotations(tmp_path / "missing.pts")
    odd = tmp_path / "odd.txt"
    odd.write_text("hello world\n")
    with pytest.raises(InputError, match="cannot tell the annotation format"):
        load_annotations(odd)
    with pytest.raises(InputError, match="unknown annotation format"):
        load_annotations(odd, format="json")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="only hold pts"):
        load_annotations(tmp_path, format="wflw")
    (tmp_path / "a.txt").write_text(PTS_OK)  # sniffed from its first line
    assert load_annotations(tmp_path / "a.txt")[0].landmarks.shape == (3, 2)
    (tmp_path / "bin.pts").write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(InputError, match=r"bin.pts:2: not UTF-8"):
        load_annotations(tmp_path / "bin.pts")


def test_box_from_landmarks():
    pts = np.array([[3.0, 4.0], [1.0, 7.5], [np.nan, np.nan], [2.0, -1.0]])
    np.testing.assert_array_equal(box_from_landmarks(pts), [1.0, -1.0, 3.0, 7.5])
    with pytest.raises(InputError, match="no finite landmark"):
        box_from_landmarks(np.full((3, 2), np.nan))


def test_data_module_does_not_import_torch():
    code = "import sys, lbcore.io.annotations; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- round trips

_coord = st.floats(min_value=-50.0, max_value=5000.0, allow_nan=False, width=64)
_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(
    pts=st.integers(1, 100).flatmap(lambda k: st.lists(st.tuples(_coord, _coord), min_size=k, max_size=k)),
    one_based=st.booleans(),
)
def test_pts_round_trip(tmp_path, pts, one_based):
    lm = np.array(pts, dtype=np.float64)
    f = tmp_path / "rt.pts"
    write_pts(f, lm, pts_one_based=one_based)
    back = read_pts(f, pts_one_based=one_based)
    np.testing.assert_allclose(back, lm, rtol=0, atol=1e-9)
    (r,) = load_annotations(f)
    assert r.box is not None and r.landmarks.shape == lm.shape


@_SETTINGS
@given(
    faces=st.lists(
        st.tuples(
            st.lists(st.tuples(_coord, _coord), min_size=98, max_size=98),
            st.tuples(_coord, _coord, _coord, _coord),
            st.tuples(*[st.integers(0, 1)] * 6),
            st.from_regex(r"[A-Za-z0-9_]{1,8}/[A-Za-z0-9_.-]{1,12}\.jpg", fullmatch=True),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_wflw_round_trip(tmp_path, faces):
    records = []
    for lm, (a, b, c, d), flags, rel in faces:
        box = np.array([min(a, c), min(b, d), max(a, c), max(b, d)])
        records.append(FaceRecord(tmp_path / rel, box, np.array(lm), WFLW98, flags))
    f = tmp_path / "list.txt"
    write_wflw_list(f, records)
    back = load_annotations(f)
    assert len(back) == len(records)
    for r, s in zip(records, back, strict=True):
        assert s.image_path == r.image_path and s.attributes == r.attributes
        np.testing.assert_array_equal(s.landmarks, r.landmarks)  # repr() round-trips exactly
        np.testing.assert_array_equal(s.box, r.box)
        assert s.scheme == WFLW98


_int = st.integers(-100, 4000)


@_SETTINGS
@given(
    faces=st.lists(
        st.tuples(
            st.sampled_from(["a.jpg", "b c.png", "d/e&'f.jpg"]),
            st.tuples(_int, _int, st.integers(0, 500), st.integers(0, 500)),
            st.one_of(
                st.none(),
                st.lists(st.tuples(_int, _int), min_size=68, max_size=68),
            ),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_dlib_xml_round_trip(tmp_path, faces):
    # one landmark layout per file, as dlib requires: use the first face's presence of parts
    with_parts = faces[0][2] is not None
    records = []
    for rel, (x, y, w, h), lm in faces:
        if with_parts and lm is None:
            lm = [(x, y)] * 68
        if not with_parts:
            lm = None
        arr = None if lm is None else np.array(lm, dtype=np.float64)
        records.append(
            FaceRecord(tmp_path / rel, np.array([x, y, x + w, y + h], float), arr, None)
        )
    f = tmp_path / "faces.xml"
    write_dlib_xml(f, records)
    back = load_annotations(f)
    # the writer groups faces by image, keeping their order within each image
    order = sorted(range(len(records)), key=lambda i: [r.image_path for r in records].index(records[i].image_path))
    expected = [records[i] for i in order]
    assert len(back) == len(expected)
    for r, s in zip(expected, back, strict=True):
        assert s.image_path == r.image_path
        np.testing.assert_array_equal(s.box, r.box)
        if r.landmarks is None:
            assert s.landmarks is None
        else:
            np.testing.assert_array_equal(s.landmarks, r.landmarks)
            assert s.scheme == IBUG68
