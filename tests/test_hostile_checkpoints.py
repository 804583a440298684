"""Hostile checkpoints through every loader: nothing executes, each is refused in one line.

Files are made here: a pickle whose ``__reduce__`` runs a shell command (zip, legacy and raw
pickle formats), zip bombs (real, and one whose members only claim huge sizes), truncated files,
an empty file, a folder, text, a pickle that is not a state dict, and state dicts with wrong
shapes, NaN or inf values. Each goes through ``lbcore.weights.load_checkpoint`` and through
``lb weights inspect`` for the fan, hrnet and avssan loaders (``WeightsError``, exit code 3, one
line naming the file). A control proves the command payload is live: plain ``pickle`` runs it.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from lbcore.errors import WeightsError  # noqa: E402
from lbcore.weights import extract_state_dict, load_checkpoint, load_state_dict_strict  # noqa: E402

LOADERS = {
    # cheap architectures of each plugin's network (same loading code as the published ones)
    "fan": "fan:modules=1,landmarks=68,width=32",
    "hrnet": "hrnet:width=6",
    "avssan": "avssan:width_div=8",
}


class _RunsCommand:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _claim_sizes(path: Path, claimed: int) -> None:
    """Rewrite every member's uncompressed size in a zip's local and central headers."""
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        while i != -1:
            data[i + off:i + off + 4] = struct.pack("<I", claimed)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def _state_dict(spec: str) -> dict:
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    name = spec.split(":")[0]
    if name not in pm.components("extractors"):
        pytest.skip(f"the {name} plugin is not installed")
    ext = pm.build("extractors", spec + ",weights=none")
    net = getattr(ext, "net", None) or getattr(ext, "network", None) or ext
    return {k: v.clone() for k, v in net.state_dict().items()}


def make_hostile(d: Path, marker: Path, spec: str | None) -> dict[str, Path]:
    """The hostile files for one loader (``spec``; None: network-independent ones only)."""
    d.mkdir(parents=True, exist_ok=True)
    evil = _RunsCommand(marker)
    sd = _state_dict(spec) if spec else {"w": torch.ones(4, 3), "b": torch.zeros(4)}
    files: dict[str, Path] = {}

    def save(name: str, obj, legacy: bool = False) -> Path:
        files[name] = d / f"{name}.pth"
        torch.save(obj, files[name], _use_new_zipfile_serialization=not legacy)
        return files[name]

    save("exec-zip", {"state_dict": sd, "note": evil})
    save("exec-legacy", {"state_dict": sd, "note": evil}, legacy=True)
    files["exec-raw-pickle"] = d / "exec-raw-pickle.pth"
    files["exec-raw-pickle"].write_bytes(pickle.dumps({"state_dict": evil}, protocol=2))
    full = save("good-zip", sd).read_bytes()
    legacy = save("good-legacy", sd, legacy=True).read_bytes()
    del files["good-zip"], files["good-legacy"]
    files["truncated-zip"] = d / "truncated-zip.pth"
    files["truncated-zip"].write_bytes(full[: len(full) // 2])
    files["truncated-legacy"] = d / "truncated-legacy.pth"
    files["truncated-legacy"].write_bytes(legacy[: len(legacy) // 2])
    # two members claiming 3.75 GiB each: over the 4 GiB limit before anything is unpacked
    bomb = save("zip-bomb-claimed", sd)
    _claim_sizes(bomb, 0xF0000000)
    files["empty"] = d / "empty.pth"
    files["empty"].write_bytes(b"")
    files["text"] = d / "text.pth"
    files["text"].write_text("not a checkpoint\n" * 50)
    files["folder"] = d / "folder.pth"
    files["folder"].mkdir(exist_ok=True)
    save("not-a-state-dict", [torch.ones(3), torch.zeros(2)])
    save("non-tensor-entry", {**sd, "extra": 3})
    wrong = dict(sd)
    k = next(k for k, v in sd.items() if v.ndim >= 2)
    wrong[k] = torch.zeros(*[s + 1 for s in sd[k].shape])
    save("wrong-shapes", wrong)
    nan = dict(sd)
    nan[k] = sd[k].clone()
    nan[k].view(-1)[0] = float("nan")
    save("nan", nan)
    inf = dict(sd)
    inf[k] = sd[k].clone()
    inf[k].view(-1)[-1] = float("inf")
    save("inf", inf)
    if spec is None:  # the shape checks need a network
        for name in ("wrong-shapes", "nan", "inf", "non-tensor-entry"):
            files.pop(name)
    return files


def test_the_payload_is_live(tmp_path):
    """Control: ordinary unpickling of the same object does run the command."""
    marker = tmp_path / "RAN"
    pickle.loads(pickle.dumps(_RunsCommand(marker)))
    assert marker.exists()


def test_load_checkpoint_refuses_every_hostile_file(tmp_path, reliability_counts):
    marker = tmp_path / "RAN"
    files = make_hostile(tmp_path / "h", marker, None)
    refused = 0
    for name, path in files.items():
        with pytest.raises(WeightsError) as ei:
            obj = load_checkpoint(path)
            extract_state_dict(obj, path)  # a loader's next step: a list is no state dict
        msg = str(ei.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
        refused += 1
    assert not marker.exists(), "a checkpoint ran a command"
    reliability_counts["hostile_checkpoints"] += len(files)
    reliability_counts["hostile_refused"] += refused
    reliability_counts["code_executed"] += int(marker.exists())


def test_real_zip_bomb_refused_before_unpacking(tmp_path, reliability_counts):
    """Honest sizes: 64 MiB of zeros deflated to ~64 KiB, refused by the unpacked-size limit."""
    path = tmp_path / "bomb.pth"
    torch.save({"w": torch.ones(3)}, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, v in members.items():
            z.writestr(n, v + b"\0" * (64 << 20) if n.endswith("/data/0") else v)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match=r"bomb\.pth: unpacks to \d+ bytes, over the 33554432-byte limit"):
        load_checkpoint(path, max_bytes=32 << 20)
    reliability_counts["hostile_checkpoints"] += 1
    reliability_counts["hostile_refused"] += 1


@pytest.mark.parametrize("loader", list(LOADERS))
def test_weights_inspect_refuses_every_hostile_file(loader, tmp_path, reliability_counts):
    """``lb weights inspect SPEC PATH`` (in-process, the CLI's own code): exit 3, one line."""
    from click.testing import CliRunner

    from lbcore.cli import cli

    marker = tmp_path / "RAN"
    spec = LOADERS[loader]
    files = make_hostile(tmp_path / "h", marker, spec)
    sd = _state_dict(spec)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": sd}, good)
    runner = CliRunner()
    ok = runner.invoke(cli, ["weights", "inspect", spec, str(good)])
    assert ok.exit_code == 0, ok.output  # the loader works: the refusals below are about the files
    refused = 0
    for name, path in files.items():
        res = runner.invoke(cli, ["weights", "inspect", spec, str(path)])
        assert res.exit_code == 3, (name, res.exit_code, res.output, res.exception)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lb: error: {path}: "), (name, res.stderr)
        refused += 1
    assert not marker.exists(), "a checkpoint ran a command"
    reliability_counts["hostile_checkpoints"] += len(files)
    reliability_counts["hostile_refused"] += refused
    reliability_counts["code_executed"] += int(marker.exists())


EXPECTED_WORDS = {
    "exec-zip": "GLOBAL posix.system",
    "truncated-zip": "ends early",
    "zip-bomb-claimed": "zip bomb",
    "wrong-shapes": "shape mismatch",
    "nan": "non-finite",
}


def test_messages_say_why(tmp_path):
    spec = LOADERS["fan"]
    files = make_hostile(tmp_path / "h", tmp_path / "RAN", spec)
    from lbcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    for name, words in EXPECTED_WORDS.items():
        with pytest.raises(WeightsError) as ei:
            pm.build("extractors", f"{spec},weights={files[name]}")
        assert words in str(ei.value), (name, str(ei.value))


def test_cli_subprocess_refuses_the_command_pickle(tmp_path, reliability_counts):
    """The real ``lb`` process, through every loader and through ``lb protect``: exit 3, no command run."""
    import numpy as np

    cv2 = pytest.importorskip("cv2")
    marker = tmp_path / "RAN"
    files = make_hostile(tmp_path / "h", marker, None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 120, np.uint8))
    runs = [["weights", "inspect", spec, str(files["exec-zip"])] for spec in LOADERS]
    runs.append(["protect", str(img), "-o", str(tmp_path / "o"), "--box", "0,0,64,64",
                 "--extractor", f"{LOADERS['fan']},weights={files['exec-legacy']}"])
    for args in runs:
        res = subprocess.run([sys.executable, "-m", "lbcore", *args], capture_output=True, text=True, env=env)
        name = args[0] if args[0] == "protect" else args[2]
        if "unknown extractor" in res.stderr:
            continue  # that plugin is not installed
        assert res.returncode == 3, (name, res.stderr)
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("lb: error: ") and "exec-" in line and "GLOBAL posix.system" in line, line
        reliability_counts["hostile_checkpoints"] += 1
        reliability_counts["hostile_refused"] += 1
    assert not marker.exists(), "a checkpoint ran a command"
    assert not (tmp_path / "o" / "face.png").exists()


def test_strict_loader_with_nan_refuses_before_touching_the_network():
    net = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = {"weight": torch.full((2, 3), float("nan")), "bias": torch.zeros(2)}
    with pytest.raises(WeightsError, match="non-finite"):
        load_state_dict_strict(net, sd, "x.pth")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_safetensors_hostile(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(4)}, str(good))
    data = good.read_bytes()
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(data[: len(data) - 4])
    liar = tmp_path / "l.safetensors"
    liar.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])  # header length claims 1 TiB
    for path in (trunc, liar):
        with pytest.raises(WeightsError, match=str(path.name)):
            load_checkpoint(path)
