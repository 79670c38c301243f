"""Simulated QEMU guests for balloond's tests, benchmarks and demos.

Real guests are slow to boot and a host holds only tens of them; balloond must handle
thousands. The simulator serves QEMU 7.2's QMP over real unix sockets, one per guest, all in
one asyncio loop, with a memory model behind each socket that is also usable on its own in
virtual time:

* :mod:`~balloond.replay.model`: a guest's memory, balloon and workload, steppable in time.
* :mod:`~balloond.replay.traces`: workload traces (JSON format and synthetic generators).
* :mod:`~testkit.sim.wire`: QMP encoding and request checks, byte-compatible with QEMU.
* :mod:`~testkit.sim.qom`: the part of QEMU's object tree a balloon controller reads.
* :mod:`~testkit.sim.qmp_server`: one simulated QEMU process (socket, sessions, events).
* :mod:`~testkit.sim.commands`: what each QMP command does, with QEMU's errors.
* :mod:`~testkit.sim.fleet`: many of them, and their shared ticker.

``python -m testkit.sim --help`` serves a fleet from the command line.
"""

from balloond.replay.model import GuestModel, GuestParams, MemoryView
from balloond.replay.traces import Trace
from testkit.sim.fleet import SimFleet
from testkit.sim.qmp_server import GuestState, SimGuest, SimGuestSpec

__all__ = [
    "GuestModel",
    "GuestParams",
    "GuestState",
    "MemoryView",
    "SimFleet",
    "SimGuest",
    "SimGuestSpec",
    "Trace",
]
