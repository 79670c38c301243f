"""The shipped systemd unit: it verifies cleanly and its sandbox stays tight.

Both checks run ``systemd-analyze`` offline, so they work without systemd as PID 1. ``verify``
insists that ExecStart's program exists, so the test checks a copy whose /usr/local/bin paths
point at the scripts installed next to the running Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "balloond.service"
MAX_EXPOSURE = 3.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package 'systemd')",
)


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    scripts = Path(sys.executable).parent
    if not (scripts / "balloond").exists():
        pytest.fail(f"balloond is not installed in {scripts}: run `make venv`")
    text = UNIT.read_text().replace("/usr/local/bin/", f"{scripts}/")
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_verifies_clean(unit_copy: Path) -> None:
    result = _analyze("verify", "--man=no", str(unit_copy))
    assert result.returncode == 0, result.stderr
    # verify reports unknown keys and bad values as warnings with exit status 0.
    assert result.stderr.strip() == "", result.stderr


def test_unit_exposure_is_low(unit_copy: Path) -> None:
    result = _analyze("security", "--offline=yes", str(unit_copy))
    assert result.returncode == 0, result.stderr
    score = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_matches_the_daemon() -> None:
    """The settings balloond relies on: readiness protocol, reload signal, its directories."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecStart=/usr/local/bin/balloond run --config /etc/balloond/balloond.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=balloond",
        "RuntimeDirectory=balloond",
        "Restart=on-failure",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    watchdog = re.search(r"^WatchdogSec=(\d+)s$", text, re.MULTILINE)
    assert watchdog is not None
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.MULTILINE)
    assert stop is not None
    assert int(stop.group(1)) > 5  # the daemon's own stop budget
