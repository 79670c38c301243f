"""The import contracts (``make lint`` runs ``lint-imports``) hold, and catch a breach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (make venv installs it)"
)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "balloond", tmp_path / "balloond")
    shutil.copytree(ROOT / "testkit", tmp_path / "testkit")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/policy/engine.py", "import asyncio", "The core is pure"),
        ("core/units.py", "import balloond.adapters.qmp", "Layers import downward only"),
        ("adapters/metrics.py", "import balloond.service.daemon", "Layers import downward only"),
        ("service/guest.py", "import qemu.qmp", "Only the QMP adapter"),
        ("service/daemon.py", "import aiomqtt", "Only the MQTT adapter"),
        ("service/guest.py", "import libvirt", "Only the libvirt adapter"),
        ("programs/balloonctl.py", "import balloond.runtime.config", "balloonctl starts light"),
        ("replay/engine.py", "import balloond.adapters.procfs", "The offline replay reaches"),
        ("programs/simulate.py", "import testkit.sim", "The product ships no test kit"),
        ("service/state.py", "import balloond.service.daemon", "No import cycles"),
    ],
)
def test_a_breach_fails_lint(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / "balloond" / module
    text = path.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    path.write_text(f"{head}from __future__ import annotations\n{line}  # noqa\n{rest}")
    result = _lint(tree)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout
    assert "BROKEN" in result.stdout
