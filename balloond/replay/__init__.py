"""Offline replay: balloond's engine and baseline controllers on simulated guests, in
virtual time, with the numbers that say which manages memory better.

No QEMU, no sockets, no clock: hours of a fleet's life replay in seconds, and the same
scenario gives the same numbers every time. ``balloond simulate`` and the quality
benchmark (``benchmarks/quality.py``) are built on it.

Modules, in the order data flows through them:

* ``scenario``  - :class:`Scenario`: guests (name, RAM, trace), host, duration; trace files
  loaded into guests.
* ``runner``    - :func:`run`: steps the guest models and calls a :class:`Controller`
  every interval with what a daemon would see.
* ``engine``    - :class:`EngineController`: balloond's own engine with the daemon's books.
* ``baselines`` - static (no ballooning), MOM-like and Proxmox-like controllers.
* ``metrics``   - what is measured, and how (reclaim, pressure, OOM kills, reaction time).
* ``compare``   - the same scenario under several controllers.
* ``report``    - tables, the quality targets and the chart.
"""

from balloond.replay.baselines import MomController, ProxmoxController, StaticController
from balloond.replay.compare import compare, policy_bounds, standard_controllers
from balloond.replay.engine import EngineController
from balloond.replay.runner import Controller, RunResult, run
from balloond.replay.scenario import (
    GuestSpec,
    HostSpec,
    Scenario,
    load_traces,
    overcommitted_host,
)
from balloond.replay.scoring import RunMetrics

__all__ = [
    "Controller",
    "EngineController",
    "GuestSpec",
    "HostSpec",
    "MomController",
    "ProxmoxController",
    "RunMetrics",
    "RunResult",
    "Scenario",
    "StaticController",
    "compare",
    "load_traces",
    "overcommitted_host",
    "policy_bounds",
    "run",
    "standard_controllers",
]
