"""scripts/setup.sh: quiet, and its last line says what to run next (issue 17).

Runs the real script against a stand-in ``.venv/bin/python`` that records how pip was called
(the real install takes minutes and needs the package registry)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_checkout(tmp_path: Path, exit_code: int = 0) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "PYTHONWARNINGS=$PYTHONWARNINGS $*" >> "{tmp_path}/calls"\nexit {exit_code}\n')
    fake.chmod(0o755)
    return tmp_path


def test_setup_quiets_build_warnings_and_ends_with_the_next_step(tmp_path):
    root = _fake_checkout(tmp_path)
    res = subprocess.run(["sh", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = (root / "calls").read_text().splitlines()
    assert calls and all(c.startswith("PYTHONWARNINGS=ignore ") for c in calls), calls
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("Set up. Next: .venv/bin/lb protect --example -o protected/"), res.stdout


def test_setup_failure_prints_no_success_line(tmp_path):
    root = _fake_checkout(tmp_path, exit_code=1)
    res = subprocess.run(["sh", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "Set up." not in res.stdout
