"""A lab guest's disk: an ext4 image of files, and a workload that reads them over and over.

Made on the host (``mkfs.ext4 -d``, from e2fsprogs) and attached read-only as a virtio-blk
disk, so the guest's page cache holds real file data and a squeezed cache shows as real
disk reads: in the guest's I/O, and on the host in QEMU's ``query-blockstats``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from balloond.core.errors import LabError
from balloond.core.units import MiB

if TYPE_CHECKING:
    from testkit.lab.guest import LabGuest

MOUNT_POINT = "/mnt/data"
READER_LOG = "/tmp/reader.log"
READER_PID = "/tmp/reader.pid"
MKFS = "mkfs.ext4"


def make_file_set(path: Path, *, files: int, file_mib: int, seed: int = 0) -> Path:
    """A raw ext4 image at ``path`` holding ``files`` files of ``file_mib`` MiB of random
    (incompressible) data each, named ``f00.bin``, ``f01.bin``, ..."""
    if shutil.which(MKFS) is None:
        raise LabError(f"{MKFS} is not installed (Debian: e2fsprogs)")
    rng = random.Random(seed)
    size_mib = files * file_mib * 11 // 10 + 32  # ext4's own metadata, with room to spare
    with tempfile.TemporaryDirectory(prefix="balloond-disk-") as tmp:
        src = Path(tmp)
        for i in range(files):
            with (src / f"f{i:02d}.bin").open("wb") as out:
                for _ in range(file_mib):
                    out.write(rng.randbytes(MiB))
        result = subprocess.run(
            [MKFS, "-q", "-F", "-L", "lab-data", "-O", "^has_journal", "-d", str(src),
             str(path), f"{size_mib}M"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise LabError(f"{MKFS} failed: {result.stderr.strip() or result.stdout.strip()}")
    return path


@dataclass(frozen=True, slots=True)
class ReadPass:
    """One read of the whole file set, timed by the guest's /proc/uptime."""

    start_s: float
    end_s: float

    @property
    def seconds(self) -> float:
        return max(self.end_s - self.start_s, 0.01)


async def mount_disk(guest: LabGuest) -> None:
    """Mount the guest's ``/dev/vda`` read-only at :data:`MOUNT_POINT`."""
    await guest.run(f"mkdir -p {MOUNT_POINT} && mount -t ext4 -o ro /dev/vda {MOUNT_POINT}")


async def start_reader(guest: LabGuest) -> None:
    """Read every file of the set, over and over, in the guest's background; each pass is
    a line ``START END`` (uptime seconds) in :data:`READER_LOG`."""
    loop = (
        "while :; do s=$(cut -d' ' -f1 /proc/uptime); "
        f"cat {MOUNT_POINT}/*.bin > /dev/null; "
        f"echo \"$s $(cut -d' ' -f1 /proc/uptime)\" >> {READER_LOG}; sleep 1; done"
    )
    await guest.run(f"rm -f {READER_LOG}; ( {loop} ) > /dev/null 2>&1 & echo $! > {READER_PID}")


async def stop_reader(guest: LabGuest) -> None:
    """Stop the reader loop (the pass under way finishes by itself)."""
    await guest.run(f"kill $(cat {READER_PID}) 2>/dev/null; rm -f {READER_PID}; true")


async def read_passes(guest: LabGuest) -> list[ReadPass]:
    """The passes the reader has finished so far."""
    text = await guest.run(f"cat {READER_LOG} 2>/dev/null; true")
    passes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                passes.append(ReadPass(float(parts[0]), float(parts[1])))
            except ValueError:
                continue
    return passes


async def vmstat(guest: LabGuest) -> dict[str, int]:
    """The guest's /proc/vmstat counters."""
    text = await guest.run("cat /proc/vmstat")
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out
