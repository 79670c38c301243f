"""The lab's guest image: a kernel plus a busybox initramfs with the virtio modules and memhog.

Building one takes a download and a compile, so images are cached in a directory named by
a hash of everything that goes into them (kernel, init script, memhog source, busybox
binary). Changing any input builds a new image next to the old; an unchanged checkout finds
its image again in well under a second. Builds are atomic (a scratch directory renamed into
place) and serialised by a file lock, so parallel test runners share one build.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from balloond.core.errors import LabError
from testkit.lab.cache import cache_root
from testkit.lab.kernel import (
    VIRTIO_MODULES,
    KernelSource,
    Progress,
    fetch_kernel,
    find_kernel_source,
    run_tool,
)

#: Bump when the image's layout changes in a way the hashed inputs do not show.
IMAGE_FORMAT = 1
BUSYBOX = Path("/bin/busybox")

_HERE = Path(__file__).resolve().parent
_INIT_SCRIPT = _HERE / "init.sh"
_MEMHOG_SOURCE = _HERE / "memhog.c"
_MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class LabImage:
    """A built guest image: what QEMU's ``-kernel`` and ``-initrd`` take."""

    root: Path
    kernel: Path
    initrd: Path
    kernel_release: str
    key: str

    @classmethod
    def load(cls, root: Path) -> LabImage:
        """The image whose manifest is in ``root``; LabError if there is none."""
        try:
            manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LabError(f"no lab image in {root}") from exc
        return cls(
            root=root,
            kernel=root / "vmlinuz",
            initrd=root / "initrd.gz",
            kernel_release=str(manifest["kernel_release"]),
            key=root.name,
        )


def build_image(*, cache_dir: Path | None = None, progress: Progress | None = None) -> LabImage:
    """Build the lab image, or find it already built; idempotent and safe to run in parallel.

    ``progress`` receives one short line per step (the CLI prints them); the default is
    silent. Raises LabError, with the failing step in the message, if a build fails.
    """
    say: Progress = progress or (lambda _line: None)
    root = cache_dir if cache_dir is not None else cache_root()
    try:
        return _find_or_build(root, say)
    except OSError as exc:  # a full disk, a cache dir we may not write...
        raise LabError(f"building the lab image in {root}: {exc}") from exc


def _find_or_build(root: Path, say: Progress) -> LabImage:
    root.mkdir(parents=True, exist_ok=True)
    busybox = _static_busybox()
    source = find_kernel_source(say)
    target = root / image_key(source, busybox)
    if (target / _MANIFEST).is_file():
        return LabImage.load(target)
    with _locked(root / ".lock"):
        if (target / _MANIFEST).is_file():  # another process built it while we waited
            return LabImage.load(target)
        say(f"building {target.name} from {source.description}")
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as scratch:
            staged = Path(scratch) / "image"
            _build_into(
                staged,
                source=source,
                busybox=busybox,
                downloads=root / "downloads",
                scratch=Path(scratch),
                say=say,
            )
            if target.exists():  # a directory without a manifest is no image: replace it
                shutil.rmtree(target)
            staged.rename(target)
    return LabImage.load(target)


def image_key(source: KernelSource, busybox: Path) -> str:
    """A short hash of everything that ends up in the image."""
    digest = hashlib.sha256()
    for part in (
        str(IMAGE_FORMAT).encode(),
        source.identity.encode(),
        " ".join(VIRTIO_MODULES).encode(),
        _INIT_SCRIPT.read_bytes(),
        _MEMHOG_SOURCE.read_bytes(),
        busybox.read_bytes(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _build_into(
    staged: Path,
    *,
    source: KernelSource,
    busybox: Path,
    downloads: Path,
    scratch: Path,
    say: Progress,
) -> None:
    kernel = fetch_kernel(source, downloads=downloads, workdir=scratch / "kernel", progress=say)
    say(f"kernel {kernel.release}: modules {', '.join(kernel.modules)}")

    rootfs = scratch / "rootfs"
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "lib" / "modules").mkdir(parents=True)
    shutil.copyfile(_INIT_SCRIPT, rootfs / "init")
    (rootfs / "init").chmod(0o755)
    shutil.copyfile(busybox, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "busybox").chmod(0o755)
    applets = run_tool([str(busybox), "--list-full"], what="listing busybox applets")
    for applet in applets.split():
        link = rootfs / applet
        if not link.exists() and link.name != "busybox":
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for name, module in kernel.modules.items():
        shutil.copyfile(module, rootfs / "lib" / "modules" / f"{name}.ko")

    say("compiling memhog (gcc -static -O2)")
    run_tool(
        [
            "gcc",
            "-static",
            "-O2",
            "-Wall",
            "-o",
            str(rootfs / "bin" / "memhog"),
            str(_MEMHOG_SOURCE),
        ],
        what="compiling memhog",
    )

    say("packing the initramfs (cpio newc, gzip)")
    staged.mkdir()
    shutil.copyfile(kernel.vmlinuz, staged / "vmlinuz")
    (staged / "initrd.gz").write_bytes(gzip.compress(_cpio(rootfs), compresslevel=9, mtime=0))
    manifest = {
        "format": IMAGE_FORMAT,
        "kernel_release": kernel.release,
        "kernel_source": source.description,
        "modules": sorted(kernel.modules),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (staged / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _cpio(rootfs: Path) -> bytes:
    """The tree as a newc archive, owned by root, in a stable order."""
    names: list[str] = []
    for directory, subdirs, files in os.walk(rootfs):
        subdirs.sort()
        for entry in sorted([*subdirs, *files]):
            names.append(os.path.relpath(os.path.join(directory, entry), rootfs))
    listing = "".join(f"{name}\n" for name in names).encode()
    try:
        done = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=rootfs,
            input=listing,
            capture_output=True,
            check=True,
        )
    except FileNotFoundError as exc:
        raise LabError("packing the initramfs: cpio is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise LabError(f"packing the initramfs: cpio failed: {exc.stderr.decode()}") from exc
    return done.stdout


def _static_busybox() -> Path:
    """/bin/busybox, checked to be statically linked: the initramfs has no C library."""
    try:
        with BUSYBOX.open("rb") as f:
            header = f.read(64)
            if header[:5] != b"\x7fELF\x02":
                raise LabError(f"{BUSYBOX} is not a 64-bit ELF executable")
            phoff = struct.unpack_from("<Q", header, 0x20)[0]
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError as exc:
        raise LabError(f"{BUSYBOX} is missing: install busybox-static") from exc
    pt_interp = 3
    for i in range(phnum):
        if struct.unpack_from("<I", table, i * phentsize)[0] == pt_interp:
            raise LabError(f"{BUSYBOX} is dynamically linked: install busybox-static")
    return BUSYBOX


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
