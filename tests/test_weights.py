"""``lb weights``: strict inspection of the published layouts, listing, and a resumable download
tested against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

KEY_LISTS = {
    # key list file -> (spec, layout written)
    "fan_2dfan4_68.txt": ("fan:modules=4,landmarks=68", "plain"),
    "fan_pyhowfar_98.txt": ("fan:modules=4,landmarks=98", "pyhowfar"),
    "hrnetv2_w18_wflw_98.txt": ("hrnet", "old-plain"),
    "avssan_itn_cpm_98.txt": ("avssan", "san-snapshot"),
}


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, shape = line.partition(" ")
        out[key] = tuple(json.loads(shape))
    return out


def _write(path: Path, shapes: dict[str, tuple[int, ...]], layout: str) -> None:
    import argparse

    import torch

    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            if layout == "old-plain":
                continue  # checkpoints from before PyTorch 0.4.1 lack these
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    if layout == "pyhowfar":
        obj = {"epoch": 3, "netType": "FAN", "best_acc": 0.1, "optimizer": {},
               "state_dict": {"module." + k: v for k, v in sd.items()}}
        torch.save(obj, path)
    elif layout == "san-snapshot":
        obj = {"epoch": 1, "args": argparse.Namespace(arch="itn_cpm", pts_num=99), "optimizer": {},
               "state_dict": {"module." + k: v for k, v in sd.items()}}
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(sd, path)


def _lb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbcore", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("key_list", sorted(KEY_LISTS))
def test_inspect_published_layouts(key_list, shared, tmp_path):
    spec, layout = KEY_LISTS[key_list]
    shapes = _shapes(shared / "reference" / "checkpoint_keys" / key_list)
    path = tmp_path / "ckpt.pth"
    _write(path, shapes, layout)
    res = _lb("weights", "inspect", spec, path, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    n_params = sum(1 for k in shapes if not k.endswith("num_batches_tracked"))
    assert info["strict"] is True
    assert info["model_keys"] == len(shapes)
    assert info["keys"] in (len(shapes), n_params)
    assert info["module_prefix"] == (layout in ("pyhowfar", "san-snapshot"))
    expected = sum(int(__import__("math").prod(s)) for k, s in shapes.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert info["parameters"] == expected


def test_inspect_reports_exact_mismatch(shared, tmp_path):
    shapes = _shapes(shared / "reference" / "checkpoint_keys" / "fan_2dfan4_68.txt")
    path = tmp_path / "ckpt.pth"
    _write(path, shapes, "plain")
    res = _lb("weights", "inspect", "fan:modules=4,landmarks=98", path)
    assert res.returncode == 3
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert str(path) in line and "shape mismatches" in line
    listed = [ln for ln in res.stdout.splitlines() if ln.startswith("shapes: ")]
    # every 68-vs-98 tensor of the four stacks: l0..l3 weight and bias, al0..al2 weight
    assert len(listed) == 11 and any(ln.startswith("shapes: l3.weight") for ln in listed)


def test_list_shows_published_and_demo():
    res = _lb("weights", "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["2dfan4"]["sha256"].startswith("11f355bf")
    assert rows["fan-demo"]["role"] == "demo" and rows["fan-demo"]["found"]
    assert "NME" in rows["fan-demo"]["note"]
    assert rows["hr18-wflw"]["fits"] == "hrnet"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    cut_after: int | None = None  # drop the connection after this many bytes (first request)
    requests: list[str | None] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            n = type(self).cut_after
            type(self).cut_after = None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def test_download_resumes_and_verifies(server, tmp_path):
    from lbcore.errors import WeightsError
    from lbcore.weights import WeightsFile, download

    payload = os.urandom(300_000)
    _RangeHandler.payload = payload
    _RangeHandler.cut_after = 100_000
    _RangeHandler.requests = []
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
    entry = WeightsFile("w", "w.pth", "x", url=url, size=len(payload),
                        sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(WeightsError, match="resume"):
        download(entry, tmp_path, progress=False)
    part = tmp_path / "w.pth.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "w.pth").exists()
    path = download(entry, tmp_path, progress=False)
    assert path.read_bytes() == payload and not part.exists()
    assert _RangeHandler.requests == [None, "bytes=100000-"]
    # a wrong checksum removes the file and says so
    bad = WeightsFile("w2", "w2.pth", "x", url=url, sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match"):
        download(bad, tmp_path, progress=False)
    assert not (tmp_path / "w2.pth").exists() and not (tmp_path / "w2.pth.part").exists()


def test_missing_weights_message():
    res = _lb("attack", "x.png", "-o", "out", "--extractor", "hrnet")
    assert res.returncode == 3
    msg = res.stderr.strip()
    assert "HR18-WFLW.pth" in msg and "LB_WEIGHTS_DIR" in msg and len(msg.splitlines()) == 1


def test_choose_weights_is_every_plugins_rule(tmp_path, monkeypatch):
    from lbcore.errors import WeightsError
    from lbcore.weights import WeightsFile, choose_weights

    monkeypatch.setenv("LB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pub = WeightsFile(name="big", filename="big.pth", fits="net", url="https://example.org/big.pth")
    demo = WeightsFile(name="small", filename="small.pth", fits="net:width=8")
    other = WeightsFile(name="tiny", filename="tiny.pth", fits="net:width=4")
    (tmp_path / "small.pth").write_bytes(b"x")
    kw = dict(owner="net", published=[pub], demos=[demo, other], no_fit="net: nothing fits")
    assert choose_weights("none", fits=lambda e: True, **kw) is None
    # auto: the published file is missing -> the fitting demo that is present
    assert choose_weights("auto", fits=lambda e: e.name in ("big", "small"), **kw) == tmp_path / "small.pth"
    assert choose_weights(None, fits=lambda e: e.name == "small", **kw) == tmp_path / "small.pth"
    assert choose_weights("small", fits=lambda e: False, **kw) == tmp_path / "small.pth"  # by name
    # nothing present fits: where the fitting file is published, and which network a demo fits
    with pytest.raises(WeightsError, match=r"'big' \(big.pth\) not found; published at .*a demo model fits net:width=8, "
                                           r"net:width=4"):
        choose_weights("auto", fits=lambda e: e.name == "big", **kw)
    with pytest.raises(WeightsError, match="net: nothing fits; a demo model fits net:width=8, net:width=4"):
        choose_weights("auto", fits=lambda e: False, **kw)
    with pytest.raises(WeightsError, match=r"nope\.pth: weights file not found \(given as net weights=\.\.\.\)"):
        choose_weights(str(tmp_path / "nope.pth"), fits=lambda e: True, **kw)
    # a present file that fails verification is an error, never a fallback to the demo
    def refuse(entry, path):
        raise WeightsError(f"{path}: sha256 mismatch")

    (tmp_path / "big.pth").write_bytes(b"y")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        choose_weights("auto", fits=lambda e: e.name in ("big", "small"), verify=refuse, **kw)


def test_seeded_init_names_one_network_and_keeps_the_callers_random_state():
    import torch

    from lbcore.weights import seeded_init

    torch.manual_seed(123)
    with seeded_init(0):
        a = torch.nn.Linear(4, 4)
    after = torch.rand(3)
    torch.manual_seed(999)
    with seeded_init(0):
        b = torch.nn.Linear(4, 4)
    torch.manual_seed(123)
    assert torch.equal(a.weight, b.weight)  # the same network whatever ran before
    assert torch.equal(after, torch.rand(3))  # the caller's stream did not move
