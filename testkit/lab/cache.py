"""Where the lab keeps what it builds and downloads, and facts about the host it runs on.

A guest image takes tens of seconds to build and its kernel comes from the network, so
both are cached across runs: inside the checkout (``<repo>/.cache/lab``, ignored by git and
removed by ``make distclean``) or, for an installed package, in ``~/.cache/balloond/lab``.
``BALLOOND_LAB_CACHE`` overrides either.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BALLOOND_LAB_CACHE"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def repo_root() -> Path | None:
    """The balloond checkout this package was imported from, or None if installed."""
    root = _PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "balloond"' in text else None


def cache_root() -> Path:
    """The directory that holds lab images (one subdirectory per input hash) and downloads."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / ".cache" / "lab"
    return Path.home() / ".cache" / "balloond" / "lab"


def host_boot_id() -> str:
    """This host boot's random id: a result cached under it is redone after a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown-boot"
