"""The wheel ships the product only: no test kit, no lab, no simulator server, no apt-get."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` on a copy of the checkout (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("balloond", "testkit"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (found,) = out.glob("balloond-*.whl")
    return found


def test_the_wheel_holds_no_test_kit(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "balloond/programs/balloonctl.py" in names
    assert "balloond/replay/examples/bursty.json" in names  # balloond simulate's examples
    assert not [n for n in names if n.startswith("testkit/")]
    assert not [n for n in names if "/lab/" in n or "qmp_server" in n or "/sim/" in n]
    assert not [n for n in names if n.endswith((".c", ".sh"))]


def test_no_code_in_the_wheel_runs_apt_get(wheel: Path) -> None:
    # (the README in the METADATA tells people to; no module does)
    with zipfile.ZipFile(wheel) as zf:
        code = [n for n in zf.namelist() if n.endswith(".py")]
        offenders = [n for n in code if b"apt-get" in zf.read(n)]
    assert code
    assert offenders == []
