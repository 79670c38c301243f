"""`python -m testkit.demo` (what `make demo` runs): it ends by itself, or on Ctrl-C, cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def _qemus_under(root: Path) -> list[int]:
    """QEMU processes whose command line mentions ``root`` (the demo's own guests)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(root) in cmdline:
            found.append(int(entry.name))
    return found


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "testkit.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def test_demo_runs_to_its_end_and_leaves_nothing(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--duration", "12")
    out = _finish(proc, 120)
    assert proc.returncode == 0, out
    assert "==> summary" in out
    assert "OOM kills in guests:         0" in out
    assert "==> all guests stopped" in out
    assert "Traceback" not in out
    for name in ("idle", "ramp", "steady"):
        assert f"\n{name} " in out, f"no table row for {name}"
    assert _qemus_under(tmp_path) == []
    assert not list(tmp_path.glob("balloond-demo-*")), "work dir left behind"


def test_demo_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--duration", "300")
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if line.startswith("==> running balloond") or not line:
            break
    proc.send_signal(signal.SIGINT)
    out = seen + _finish(proc, 60)
    assert proc.returncode == 0, out
    assert "==> summary" in out
    assert "==> all guests stopped" in out
    assert "Traceback" not in out
    assert _qemus_under(tmp_path) == []
