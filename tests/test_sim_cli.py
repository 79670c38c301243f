"""``python -m testkit.sim`` serves a fleet until SIGTERM and cleans up after itself."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from testkit.sim.__main__ import build_specs, parse_args


def test_cli_serves_sockets_until_sigterm() -> None:
    with tempfile.TemporaryDirectory(prefix="simcli", dir="/tmp") as d:
        proc = subprocess.Popen(
            [sys.executable, "-m", "testkit.sim", "--dir", d, "--guests", "3", "--ram", "512MiB"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(5)]
            assert lines[0].startswith("3 guests of 512MiB")
            paths = [Path(line.strip()) for line in lines[1:4]]
            assert [p.name for p in paths] == [f"guest-000{i}.sock" for i in (1, 2, 3)]
            assert lines[4].startswith("serving")
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(paths[1]))
                greeting = json.loads(s.makefile("rb").readline())
                assert greeting["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0
            assert "sockets removed" in out
            assert not list(Path(d).glob("*.sock"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_cli_options_build_distinct_guests() -> None:
    args = parse_args(
        ["--dir", "/tmp/x", "--guests", "12", "--trace", "bursty", "--qemu-version", "9.2"]
    )
    specs = build_specs(args)
    assert [s.name for s in specs][:2] == ["guest-0001", "guest-0002"]
    assert {s.qemu_version for s in specs} == {(9, 2, 0)}
    assert specs[0].trace != specs[1].trace  # each guest has its own bursts


def test_cli_rejects_bad_sizes() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--dir", "/tmp/x", "--ram", "lots"])
