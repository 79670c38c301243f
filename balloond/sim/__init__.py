"""Simulated QEMU guests for balloond's tests, benchmarks and demos.

Real guests are slow to boot and a host holds only tens of them; balloond must handle
thousands. The simulator serves QEMU 7.2's QMP over real unix sockets, one per guest, all in
one asyncio loop, with a memory model behind each socket that is also usable on its own in
virtual time:

* :mod:`~balloond.sim.model`: a guest's memory, balloon and workload, steppable in time.
* :mod:`~balloond.sim.traces`: workload traces (JSON format and synthetic generators).
* :mod:`~balloond.sim.wire`: QMP encoding and request checks, byte-compatible with QEMU.
* :mod:`~balloond.sim.qom`: the part of QEMU's object tree a balloon controller reads.
* :mod:`~balloond.sim.qmp_server`: one simulated QEMU process (socket, sessions, events).
* :mod:`~balloond.sim.commands`: what each QMP command does, with QEMU's errors.
* :mod:`~balloond.sim.fleet`: many of them, and their shared ticker.

``python -m balloond.sim --help`` serves a fleet from the command line.
"""

from balloond.sim.fleet import SimFleet
from balloond.sim.model import GuestModel, GuestParams, MemoryView
from balloond.sim.qmp_server import GuestState, SimGuest, SimGuestSpec
from balloond.sim.traces import Trace

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
