"""Running the same scenario under balloond and the baselines, side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from balloond.replay.baselines import (
    Bounds,
    FreePageReportingController,
    MomController,
    ProxmoxController,
    StaticController,
    UsableBandController,
)
from balloond.replay.engine import EngineController
from balloond.replay.runner import Controller, RunResult, run
from balloond.replay.scenario import Scenario
from balloond.runtime.config import Config


def policy_bounds(config: Config) -> Bounds:
    """Each guest's ``min_size`` and ``max_size`` from its policy in ``config``."""

    def bounds(name: str, boot_bytes: int) -> tuple[int, int]:
        policy = config.resolve_policy(guest_name=name, boot_bytes=boot_bytes)
        return policy.min_bytes, policy.max_bytes

    return bounds


def standard_controllers(config: Config, *, name: str = "balloond") -> list[Controller]:
    """The baselines with the policy's bounds, then balloond: static, free page reporting,
    MOM (both grow rules), Proxmox, the usable-memory band."""
    bounds = policy_bounds(config)
    return [
        StaticController(),
        FreePageReportingController(),
        MomController(bounds),
        MomController(bounds, upstream=True),
        ProxmoxController(bounds),
        UsableBandController(bounds),
        EngineController(config, name=name),
    ]


def compare(
    scenario: Scenario,
    controllers: Sequence[Controller],
    *,
    progress: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """One run per controller, in order; ``progress`` is called after each."""
    results = []
    for controller in controllers:
        result = run(scenario, controller)
        if progress is not None:
            progress(result)
        results.append(result)
    return results
