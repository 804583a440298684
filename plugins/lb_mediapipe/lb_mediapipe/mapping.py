"""Face Mesh (468 points) -> iBUG-68: which mesh points stand for each iBUG point.

Source of the correspondence: Peizhi Yan, "Mediapipe_2_Dlib_Landmarks"
(github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, file ``mediapipe2dlib/mp2dlib.py``, 2024), a
published table from MediaPipe's mesh indices to dlib's 68 points (dlib uses the iBUG-300W
layout). Where that table gives two mesh points for one iBUG point, the iBUG point is their
mean. The table is written out here as facts (indices), grouped by facial part.

iBUG points 36 and 45 (0-based) - the outer eye corners that normalise NME - are mesh points
33 and 263, the outer corners of the subject's right and left eye in MediaPipe's topology.
"""

from __future__ import annotations

__all__ = ["MESH_TO_IBUG68", "MESH_POINTS", "mesh_to_ibug68"]

# one entry per iBUG-68 point (0-based order): the mesh indices averaged for it
MESH_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw contour 0-16, from the subject's right ear to the left
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # right eyebrow 17-21, left eyebrow 22-26
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostril base 31-35
    (168, 6), (197, 195), (5,), (4,),
    (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41, left eye 42-47 (36 and 45 are the outer corners)
    (33,), (160,), (158,), (133,), (153,), (144,),
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lip 48-59
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lip 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)

MESH_POINTS = 468


def mesh_to_ibug68(mesh: object) -> object:
    """``(..., 468, D)`` mesh points (torch tensor) -> ``(..., 68, D)`` iBUG points; differentiable."""
    import torch

    assert isinstance(mesh, torch.Tensor)
    idx = torch.tensor([m[0] for m in MESH_TO_IBUG68], device=mesh.device)
    idx2 = torch.tensor([m[-1] for m in MESH_TO_IBUG68], device=mesh.device)
    return 0.5 * (mesh.index_select(-2, idx) + mesh.index_select(-2, idx2))
