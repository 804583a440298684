"""Attacking through the differentiable JPEG keeps more of the attack after real JPEG.

A small heat-map network is trained here on synthetic "faces" (four coloured blobs whose
positions are known) until its heat-maps follow the input. Landmark Breaker's attack
(:func:`lbcore.attack`, Eq. 1 with MI-FGSM, eps = 15) is then run on held-out images with and
without the ``diffjpeg:quality=50`` surrogate, the adversarial images are compressed with the
real OpenCV JPEG at Q50 (the paper's IC Q50), and NME between the clean and the adversarial
predictions is compared (NME = mean point distance / distance between points 0 and 1, the
"eyes").
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lbcore import (
    AttackConfig,
    Faces,
    HeatmapExtractor,
    LandmarkScheme,
    apply_affine,
    argmax_2d,
    attack,
)

SIZE = 64
BOX = (8.0, 8.0, 55.0, 55.0)
COLOURS = torch.tensor([[230, 40, 40], [40, 200, 40], [40, 60, 230], [230, 220, 40]], dtype=torch.float32)
LAYOUT = torch.tensor([[22.0, 24.0], [42.0, 24.0], [32.0, 36.0], [32.0, 46.0]])  # eyes, nose, mouth
K = len(LAYOUT)


def render(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, 64, 64)`` in [0, 255] and their landmarks ``(n, 4, 2)``."""
    low = torch.rand(n, 3, 4, 4, generator=gen) * 120 + 60
    img = nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    img = img + torch.randn(n, 3, SIZE, SIZE, generator=gen) * 6
    pts = LAYOUT + (torch.rand(n, K, 2, generator=gen) - 0.5) * 12
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    for k in range(K):
        d2 = (xx - pts[:, k, 0, None, None]) ** 2 + (yy - pts[:, k, 1, None, None]) ** 2
        mask = torch.sigmoid((9 - d2) * 0.8)[:, None]  # a disk of radius 3 with a soft edge
        img = img * (1 - mask) + COLOURS[k].view(1, 3, 1, 1) * mask
    return img.clamp(0, 255), pts


class BlobNet(HeatmapExtractor):
    """A four-landmark heat-map network: 32x32 crop of the box, 16x16 heat-maps."""

    input_size = (32, 32)
    scheme = LandmarkScheme("blobs4", K, (0, 1))

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(32, K, 1),
        )

    def crop_theta(self, boxes: torch.Tensor) -> torch.Tensor:
        # the box's pixel span, resampled uniformly onto the 32x32 crop (pixel centres at integers)
        sx = (boxes[:, 2] - boxes[:, 0] + 1) / self.input_size[1]
        sy = (boxes[:, 3] - boxes[:, 1] + 1) / self.input_size[0]
        theta = torch.zeros(len(boxes), 2, 3, device=boxes.device)
        theta[:, 0, 0], theta[:, 0, 2] = sx, boxes[:, 0] + 0.5 * sx - 0.5
        theta[:, 1, 1], theta[:, 1, 2] = sy, boxes[:, 1] + 0.5 * sy - 0.5
        return theta

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        return crops / 127.5 - 1.0

    def forward_crops(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def decode(self, output):  # type: ignore[no-untyped-def]
        return apply_affine(output.hm_to_image, argmax_2d(output.heatmaps))


def faces_for(n: int) -> Faces:
    return Faces(torch.tensor([BOX] * n), torch.arange(n))


def nme(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-face NME of ``pred`` against ``ref``, normalised by ``ref``'s points 0-1 distance."""
    return (pred - ref).norm(dim=-1).mean(-1) / (ref[:, 0] - ref[:, 1]).norm(dim=-1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def blobnet(one_thread) -> BlobNet:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = BlobNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    hm = torch.arange(16).float()
    yy, xx = torch.meshgrid(hm, hm, indexing="ij")
    faces = faces_for(16)
    for _ in range(300):
        img, pts = render(16, gen)
        out = net(img, faces)
        # Gaussian targets at the true points, placed in heat-map coordinates
        a, b = out.hm_to_image[:, :, :2], out.hm_to_image[:, :, 2]
        hp = torch.linalg.solve(a, (pts - b[:, None]).transpose(1, 2)).transpose(1, 2)
        target = torch.exp(-((xx - hp[..., 0, None, None]) ** 2 + (yy - hp[..., 1, None, None]) ** 2) / (2 * 0.8**2))
        loss = 100 * ((out.heatmaps - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_attack_through_diffjpeg_survives_real_jpeg(blobnet, codecs_pm, record_property):
    img, pts = render(12, torch.Generator().manual_seed(123))
    faces = faces_for(12)
    clean = blobnet.predict(img, faces)
    # the network works and follows its input: accurate, and predictions vary with the image
    assert float(nme(clean, pts).mean()) < 0.12
    assert float(clean.std(dim=0).mean()) > 2.0

    jpeg50 = codecs_pm.build_degradation("jpeg:quality=50")
    results = {}
    for name, eot in [("plain", ()), ("diffjpeg", ("diffjpeg:quality=50",)),
                      ("diffjpeg-cubic", ("diffjpeg:quality=50,rounding=cubic",))]:
        adv = attack(img, faces, blobnet, AttackConfig(eps=15, steps=20, eot=eot, seed=0),
                     plugin_manager=codecs_pm).adversarial
        assert float((adv - img).abs().max()) <= 15.0 + 1e-4
        results[name] = float(nme(blobnet.predict(jpeg50(adv), faces), clean).mean())
        record_property(f"nme_after_jpeg50_{name}", round(results[name], 3))
    print("NME after real JPEG Q50:", {k: round(v, 3) for k, v in results.items()})
    for name in ("diffjpeg", "diffjpeg-cubic"):
        assert results[name] > results["plain"] + 0.08
        assert results[name] > 1.4 * results["plain"]
