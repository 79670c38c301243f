"""balloond's test lab: tiny real Linux guests under QEMU with the real virtio_balloon driver.

The daemon's behaviour only means something against real guests (the balloon driver's
timing, the guest's OOM killer, QEMU's QMP quirks), so the tests boot them: a cached image
(``build_image``) and guests that start in seconds (``LabGuest``)::

    image = build_image()
    async with LabGuest(image, workdir=tmp_path, name="g1", memory_mib=512) as guest:
        hog = await guest.start_memhog(mib=320, rate_mib_s=100)
        allocated = await hog.wait_allocated(timeout_s=60)

``python -m testkit.lab build`` builds the image ahead of time (``make image``).
"""

from testkit.lab.accel import choose_accel
from testkit.lab.console import CommandResult, ConsoleTimeoutError
from testkit.lab.guest import GuestState, LabGuest
from testkit.lab.image import LabImage, build_image
from testkit.lab.memhog import Memhog

__all__ = [
    "CommandResult",
    "ConsoleTimeoutError",
    "GuestState",
    "LabGuest",
    "LabImage",
    "Memhog",
    "build_image",
    "choose_accel",
]
