"""Running balloond as a service: the daemon plus its adapters, under signals.

``serve()`` builds the :class:`~balloond.service.daemon.Daemon`, starts each configured adapter
(control socket, metrics, MQTT, systemd notify) as a task of the daemon's supervisor, and
maps signals: SIGTERM/SIGINT stop, SIGHUP reloads. An adapter that fails is logged,
restarted with backoff and shown in ``balloonctl status``; the daemon keeps controlling its
guests meanwhile: adapters serve operators, the control loop serves guests. Adapters stop
with the daemon, within the same stop budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import resource
import signal
from pathlib import Path
from typing import Protocol

from balloond import __version__
from balloond.runtime.config import Config
from balloond.service.daemon import Daemon

log = logging.getLogger("balloond")

#: The cyclic garbage collector's thresholds in the daemon process (gc.set_threshold).
#: Python's default (700, 10, 10) suits short programs. The daemon allocates tens of
#: thousands of short-lived objects a second at thousands of guests and keeps a minute of
#: samples for each, and under the default it ran a full collection every two seconds that
#: stopped the event loop for about 0.3 s at 2,000 guests (benchmarks/scale.py).
GC_THRESHOLDS = (10_000, 10, 10)


def raise_open_file_limit() -> None:
    """Each guest holds a QMP connection: lift the soft open-file limit to the hard one.

    systemd's default soft limit is 1024, which would stop balloond near 1,000 guests; the
    hard limit (524288 under systemd) is what the administrator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.debug("open-file limit raised from %d to %d", soft, hard)


class Adapter(Protocol):
    """Something at the edge that runs beside the daemon until ``stop`` is set."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


def build_adapters(daemon: Daemon) -> list[Adapter]:
    """The adapters the config asks for (each module adds its own here)."""
    from balloond.adapters.control_socket import ControlAdapter
    from balloond.adapters.metrics import MetricsAdapter
    from balloond.adapters.systemd import NotifyAdapter

    config = daemon.config
    control_path = config.control.socket_path(config.daemon.runtime_dir)
    adapters: list[Adapter] = [NotifyAdapter(daemon), ControlAdapter(daemon, path=control_path)]
    if config.metrics.enabled:
        adapters.append(MetricsAdapter(daemon, address=config.metrics.address))
    if config.mqtt is not None:
        from balloond.adapters.mqtt import MqttAdapter  # aiomqtt is imported only when MQTT is on

        adapters.append(MqttAdapter(daemon))

    def restart_only(starting: bool) -> None:
        new = daemon.config
        if not starting and (
            new.control.socket_path(new.daemon.runtime_dir) != control_path
            or new.metrics != config.metrics
        ):
            log.warning("[control] and [metrics] changes take effect when balloond restarts")

    daemon.on_reload(restart_only)
    return adapters


async def serve(
    config: Config,
    *,
    config_path: Path | None,
    dry_run: bool | None,
    record_trace_dir: Path | None = None,
) -> int:
    """Run the daemon and its adapters until SIGTERM or SIGINT; SIGHUP reloads.

    ``record_trace_dir`` (``balloond run --record-trace``) adds the trace recorder.
    """
    daemon = Daemon(config, config_path=config_path, dry_run=dry_run)
    gc.set_threshold(*GC_THRESHOLDS)
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    mode = " (dry run: no balloon will be changed)" if daemon.dry_run else ""
    log.info("balloond %s starting%s", __version__, mode)
    adapters = build_adapters(daemon)
    if record_trace_dir is not None:
        from balloond.service.recorder import TraceRecorder

        adapters.append(TraceRecorder(daemon, record_trace_dir))
    for adapter in adapters:
        # The daemon's own stop event: adapters stop with it, within its stop budget.
        daemon.supervisor.start(
            f"adapter:{adapter.name}", functools.partial(adapter.run, daemon.stop_event)
        )
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
