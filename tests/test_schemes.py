"""Landmark schemes: the 98->68 map, flip permutations and scheme conversion."""

from __future__ import annotations

import numpy as np
import pytest

from lbcore.errors import SpecError
from lbcore.schemes import (
    IBUG68,
    WFLW98,
    WFLW98_TO_IBUG68,
    convert_landmarks,
    flip_permutation,
    scheme_for,
)


def test_map_98_to_68_regions():
    m = WFLW98_TO_IBUG68
    assert len(m) == 68
    assert len(set(m)) == 68
    assert m[:17] == tuple(range(0, 33, 2))  # contour: every other point
    assert m[8] == 16  # chin to chin
    assert m[17:22] == (33, 34, 35, 36, 37)  # right brow upper arc
    assert m[22:27] == (42, 43, 44, 45, 46)  # left brow upper arc
    assert m[27:36] == tuple(range(51, 60))  # nose
    # eye corners: 68-scheme outer/inner corners come from the 98-scheme corners
    assert (m[36], m[39], m[42], m[45]) == (60, 64, 68, 72)
    assert m[48:68] == tuple(range(76, 96))  # lips
    assert 96 not in m and 97 not in m  # pupils have no 68-point counterpart


@pytest.mark.parametrize("scheme", [WFLW98, IBUG68])
def test_flip_is_an_involution(scheme):
    perm = np.array(flip_permutation(scheme))
    assert sorted(perm.tolist()) == list(range(scheme.num_points))
    np.testing.assert_array_equal(perm[perm], np.arange(scheme.num_points))
    assert scheme.flip_permutation == tuple(perm.tolist())


def test_flip_swaps_eye_corners():
    p98, p68 = flip_permutation(98), flip_permutation("ibug68")
    assert (p98[60], p98[72], p98[64], p98[68]) == (72, 60, 68, 64)
    assert (p98[96], p98[0], p98[16], p98[79]) == (97, 32, 16, 79)
    assert (p68[36], p68[45], p68[39], p68[42]) == (45, 36, 42, 39)
    assert (p68[0], p68[8], p68[30], p68[48], p68[62]) == (16, 8, 30, 54, 62)


def test_flips_agree_through_the_map():
    """Flipping then mapping equals mapping then flipping: the two orders describe one face."""
    m = np.array(WFLW98_TO_IBUG68)
    p98, p68 = np.array(flip_permutation(WFLW98)), np.array(flip_permutation(IBUG68))
    np.testing.assert_array_equal(m[p68], p98[m])


def test_flip_of_a_symmetric_face_is_itself():
    """Mirror a synthetic 68-point face that is symmetric about x=0: flipped == original."""
    rng = np.random.default_rng(0)
    perm = np.array(flip_permutation(IBUG68))
    pts = rng.normal(size=(68, 2))
    # make it symmetric: each pair mirrored, midline points on x=0
    for i, j in enumerate(perm):
        if i == j:
            pts[i, 0] = 0.0
        elif i < j:
            pts[j] = pts[i] * [-1, 1]
    flipped = pts[perm] * [-1, 1]
    np.testing.assert_allclose(flipped, pts)


def test_flip_unknown_scheme():
    with pytest.raises(SpecError, match="no horizontal flip"):
        flip_permutation(scheme_for(5))
    with pytest.raises(SpecError, match="unknown name"):
        flip_permutation("helen194")


def test_convert_98_to_68_numpy_and_torch():
    pts = np.arange(98 * 2, dtype=np.float64).reshape(98, 2)
    out = convert_landmarks(pts, WFLW98, IBUG68)
    assert out.shape == (68, 2)
    np.testing.assert_array_equal(out[36], pts[60])
    np.testing.assert_array_equal(out[45], pts[72])
    batch = np.stack([pts, pts + 1])
    np.testing.assert_array_equal(convert_landmarks(batch, 98, 68)[1, 45], pts[72] + 1)

    torch = pytest.importorskip("torch")
    t = torch.from_numpy(batch)
    tout = convert_landmarks(t, "wflw98", "ibug68")
    assert isinstance(tout, torch.Tensor)
    np.testing.assert_array_equal(tout.numpy(), convert_landmarks(batch, 98, 68))


def test_convert_identity_and_errors():
    pts = np.zeros((68, 2))
    assert convert_landmarks(pts, 68, IBUG68) is pts
    with pytest.raises(SpecError, match="cannot convert ibug68 landmarks to wflw98"):
        convert_landmarks(pts, 68, 98)
    with pytest.raises(SpecError, match="not 98 points"):
        convert_landmarks(pts, 98, 68)
    with pytest.raises(SpecError):
        convert_landmarks(np.zeros((5, 2)), 5, 68)


@pytest.mark.parametrize("name", ["lenna", "takeo"])
def test_real_face_mirrors_onto_itself(shared, name):
    """Mirroring a near-frontal, human-annotated iBUG face and re-ordering its points with the
    flip permutation gives back nearly the same shape; without the re-ordering it does not."""
    text = (shared / "data" / "faces68" / f"{name}.pts").read_text().split("{")[1].split("}")[0]
    pts = np.array([float(v) for v in text.split()]).reshape(68, 2)
    perm = np.array(flip_permutation(IBUG68))
    interocular = np.linalg.norm(pts[36] - pts[45])
    assert pts[36, 0] < pts[30, 0] < pts[45, 0]  # subject's right eye on the image's left

    def mirror_error(order: np.ndarray) -> float:
        mirrored = pts[order] * [-1.0, 1.0]
        mirrored += (pts - mirrored).mean(axis=0)  # best translation
        return float(np.linalg.norm(mirrored - pts, axis=1).mean() / interocular)

    assert mirror_error(perm) < 0.25
    assert mirror_error(np.arange(68)) > 0.6


def test_unknown_point_count_is_refused_not_guessed():
    from lbcore.schemes import FIVE, known_scheme

    with pytest.raises(SpecError) as ei:
        scheme_for(66)
    msg = str(ei.value)
    assert "66 points" in msg and "eye_corners" in msg and "\n" not in msg
    assert known_scheme(66) is None and scheme_for(5) is FIVE and FIVE.eye_corners == (0, 1)


def test_extractor_without_a_usable_scheme_is_refused_when_built():
    from lbcore.errors import RegistryError
    from lbcore.plugins import PluginManager
    from lbcore.types import LandmarkScheme

    class NoScheme:
        def decode(self, out):  # looks like an extractor, declares nothing
            return out

    class BadCorners(NoScheme):
        scheme = LandmarkScheme("odd", 4, (2, 2))

    class Plugin:
        @staticmethod
        def register_extractors(register):
            register("no-scheme", NoScheme)
            register("bad-corners", BadCorners)
            register("needs-66", lambda: scheme_for(66))

    from lbcore import hookimpl

    Plugin.register_extractors = hookimpl(Plugin.register_extractors)  # type: ignore[method-assign]
    pm = PluginManager(load_entry_points=False)
    pm.add_plugin(Plugin, name="odd", distribution="lb-odd")
    with pytest.raises(RegistryError, match="'no-scheme' .* declares no landmark scheme"):
        pm.build("extractors", "no-scheme")
    with pytest.raises(RegistryError, match=r"eye corners \(2, 2\)"):
        pm.build("extractors", "bad-corners")
    with pytest.raises(SpecError, match="no landmark scheme is known for 66 points"):
        pm.build("extractors", "needs-66")
