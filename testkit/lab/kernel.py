"""The guest kernel and its virtio modules: the host's own when usable, else Debian's.

Lab guests run the real ``virtio_balloon`` driver, so they need a kernel that has it as a
loadable module (a guest "without the driver" simply does not load it). The host's kernel
in ``/boot`` is used when it is readable and has the modules; otherwise (containers, CI
VMs without ``/boot``) Debian's ``linux-image-cloud-amd64`` is downloaded with
``apt-get download`` and unpacked with ``dpkg -x``. It is never installed on the host.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from balloond.core.errors import LabError

#: Load order in the guest; each needs the ones before it.
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_balloon",
)
#: Debian's metapackage that always depends on the current cloud kernel.
DEBIAN_METAPACKAGE = "linux-image-cloud-amd64"

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_DEPENDS_RE = re.compile(r"^\s*\|?Depends:\s*(linux-image-\S+)\s*$", re.MULTILINE)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class KernelSource:
    """Where the guest kernel will come from, decided before anything is fetched.

    ``identity`` enters the image's cache key: a new kernel means a new image.
    """

    description: str
    identity: str
    package: str | None = None  # Debian package to download; None for the host's kernel


@dataclass(frozen=True, slots=True)
class GuestKernel:
    """A kernel image and its virtio modules, ready to copy into a lab image.

    ``modules`` maps a module name to its uncompressed ``.ko``; a name that is missing is
    built into the kernel.
    """

    release: str
    vmlinuz: Path
    modules: dict[str, Path]


def run_tool(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a host tool unattended (no stdin, no prompts); its stdout, or LabError."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what}: {argv[0]} is not installed") from exc
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise LabError(f"{what}: `{' '.join(argv)}` failed ({done.returncode}): {output}")
    return done.stdout


def find_kernel_source(progress: Progress) -> KernelSource:
    """The host kernel if it will do, else the versioned Debian cloud kernel package."""
    host = _host_kernel()
    if host is not None:
        release, vmlinuz, _ = host
        stat = vmlinuz.stat()
        return KernelSource(
            description=f"host kernel {release}",
            identity=f"host:{release}:{stat.st_size}:{int(stat.st_mtime)}",
        )
    package = _resolve_debian_package(progress)
    return KernelSource(description=package, identity=f"debian:{package}", package=package)


def fetch_kernel(
    source: KernelSource, *, downloads: Path, workdir: Path, progress: Progress
) -> GuestKernel:
    """Put the kernel and uncompressed modules under ``workdir`` and describe them."""
    workdir.mkdir(parents=True, exist_ok=True)
    if source.package is None:
        host = _host_kernel()
        if host is None:
            raise LabError("the host kernel is no longer readable")
        release, vmlinuz, found = host
    else:
        deb = _download(source.package, downloads=downloads, progress=progress)
        unpacked = workdir / "deb"
        run_tool(["dpkg", "-x", str(deb), str(unpacked)], what="unpacking the kernel")
        release, vmlinuz, found = _kernel_in_tree(unpacked, source.package)
    modules_dir = workdir / "modules"
    modules_dir.mkdir(parents=True, exist_ok=True)
    modules = {name: _decompress(path, modules_dir / f"{name}.ko") for name, path in found.items()}
    kernel_copy = workdir / "vmlinuz"
    shutil.copyfile(vmlinuz, kernel_copy)
    return GuestKernel(release=release, vmlinuz=kernel_copy, modules=modules)


def _host_kernel() -> tuple[str, Path, dict[str, Path]] | None:
    release = os.uname().release
    vmlinuz = Path(f"/boot/vmlinuz-{release}")
    if not os.access(vmlinuz, os.R_OK):
        return None
    try:
        modules = _find_modules(Path(f"/lib/modules/{release}"))
    except LabError:
        return None
    return release, vmlinuz, modules


def _find_modules(release_dir: Path) -> dict[str, Path]:
    """Each virtio module's file; a module built into the kernel is left out.

    virtio_balloon itself must be a module, or a guest without the driver is impossible.
    """
    try:
        builtin = (release_dir / "modules.builtin").read_text(encoding="utf-8")
    except OSError:
        builtin = ""
    files = {path.name: path for path in sorted(release_dir.glob("kernel/drivers/**/*.ko*"))}
    found: dict[str, Path] = {}
    for name in VIRTIO_MODULES:
        for suffix in _MODULE_SUFFIXES:
            if f"{name}{suffix}" in files:
                found[name] = files[f"{name}{suffix}"]
                break
        else:
            if name == "virtio_balloon" or f"/{name}.ko" not in builtin:
                raise LabError(f"{release_dir} has no module {name}")
    return found


def _kernel_in_tree(tree: Path, package: str) -> tuple[str, Path, dict[str, Path]]:
    kernels = sorted(tree.glob("boot/vmlinuz-*"))
    if not kernels:
        raise LabError(f"{package} contains no boot/vmlinuz-*")
    release = kernels[0].name.removeprefix("vmlinuz-")
    for lib in ("lib", "usr/lib"):
        release_dir = tree / lib / "modules" / release
        if release_dir.is_dir():
            return release, kernels[0], _find_modules(release_dir)
    raise LabError(f"{package} has no modules directory for {release}")


def _resolve_debian_package(progress: Progress) -> str:
    """The versioned package the metapackage depends on now, e.g. linux-image-6.1.0-NN-cloud-amd64.

    On a machine whose package lists were never fetched, run ``apt-get update`` once.
    """

    def depends() -> str | None:
        try:
            text = run_tool(
                ["apt-cache", "depends", DEBIAN_METAPACKAGE], what="resolving the kernel package"
            )
        except LabError:
            return None
        match = _DEPENDS_RE.search(text)
        return match.group(1) if match else None

    package = depends()
    if package is None:
        progress(f"{DEBIAN_METAPACKAGE} unknown to apt: running apt-get update")
        run_tool(["apt-get", "update", "-q"], what="updating the package lists")
        package = depends()
    if package is None:
        raise LabError(
            f"apt cannot resolve {DEBIAN_METAPACKAGE}: is this Debian with the main archive"
            " in its sources? (or set up /boot/vmlinuz-$(uname -r) with virtio modules)"
        )
    return package


def _download(package: str, *, downloads: Path, progress: Progress) -> Path:
    """The package's .deb in ``downloads``, fetched by its exact name if not there yet."""
    downloads.mkdir(parents=True, exist_ok=True)
    existing = sorted(downloads.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    progress(f"fetching kernel {package}")
    # apt-get writes into the current directory: use a scratch one so an interrupted
    # download never leaves a truncated .deb where the next run would trust it.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as scratch:
        run_tool(["apt-get", "download", "-q", package], cwd=Path(scratch), what="downloading")
        debs = sorted(Path(scratch).glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download {package} produced {len(debs)} .deb files")
        target = downloads / debs[0].name
        debs[0].replace(target)
    return target


def _decompress(source: Path, target: Path) -> Path:
    if source.name.endswith(".ko.xz"):
        target.write_bytes(lzma.decompress(source.read_bytes()))
    elif source.name.endswith(".ko.gz"):
        target.write_bytes(gzip.decompress(source.read_bytes()))
    elif source.name.endswith(".ko.zst"):
        with target.open("wb") as out:
            try:
                subprocess.run(
                    ["zstd", "-dc", str(source)], stdout=out, stdin=subprocess.DEVNULL, check=True
                )
            except (OSError, subprocess.CalledProcessError) as exc:
                raise LabError(f"cannot decompress {source} (is zstd installed?)") from exc
    else:
        shutil.copyfile(source, target)
    return target
