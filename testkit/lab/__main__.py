"""``python -m testkit.lab``: build the lab image ahead of the tests, or check the accelerator.

``make image`` runs ``build`` so that the first test does not pay for the download and the
compile, and so that a broken build fails with one clear line instead of a test error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from balloond.core.errors import LabError
from testkit.lab.accel import choose_accel
from testkit.lab.image import build_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the guest image (or find it in the cache)")
    commands.add_parser("accel", help="print the accelerator lab guests use here (kvm or tcg)")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"==> lab image: {line}", flush=True)

    started = time.monotonic()
    try:
        image = build_image(progress=say)
        if args.command == "build":
            elapsed_s = time.monotonic() - started
            print(f"==> lab image ready: {image.root} ({elapsed_s:.1f} s)", flush=True)
        else:
            print(asyncio.run(choose_accel(image)), flush=True)
    except LabError as exc:
        print(f"==> lab image FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
