"""The supervisor: wires discovery, guest controllers, the host planner and the adapters.

It owns one named task per guest and a few daemon-wide tasks (discovery rescan, host
planner), all started through one :class:`~balloond.service.supervisor.Supervisor`: a task that ends
unexpectedly is logged with its traceback and restarted with backoff, it never takes another
guest down, and its failure shows in ``balloonctl status``, the metrics and systemd's
STATUS. Shutdown is staged: controllers are asked to finish their current step, then waited
for within a budget, then cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from balloond.adapters.audit_log import AuditLog
from balloond.adapters.discovery import GuestSource, GuestSpec, Way, discover
from balloond.adapters.port import Listener
from balloond.adapters.procfs import read_host
from balloond.adapters.proxmox import proxmox_guests
from balloond.adapters.qmp import QmpLink, SharedQmpLink, silence_qmp_library_logs
from balloond.core.errors import ConfigError
from balloond.core.events import GuestEvent as ControllerEvent
from balloond.core.events import HoldExpired
from balloond.core.link import GuestLink, LinkState
from balloond.core.ops import OPS
from balloond.core.policy import Reason, Reclaim, ResolvedPolicy, plan_host
from balloond.core.policy.decision import PRESSURE_REASONS
from balloond.core.stats import HostSnapshot
from balloond.core.units import MiB
from balloond.runtime.aio import sleep_unless
from balloond.runtime.config import Config, load_config
from balloond.service.commands import Commands
from balloond.service.guest import GuestController, Intent, Timing
from balloond.service.state import StateStore
from balloond.service.supervisor import Supervisor, TaskFailure

log = logging.getLogger("balloond.service.daemon")

#: How long shutdown waits for controllers to finish their step before cancelling them.
STOP_BUDGET_S = 3.0
#: How long shutdown waits for the last audit lines and the saved state to reach the disk.
IO_DRAIN_S = 2.0


#: Seconds after start when the objects alive then (config, controllers, links, the
#: libraries) move out of the garbage collector's way.
GC_SETTLE_S = 5.0


def _settle_gc() -> None:
    """Most of a daemon's objects live as long as it does: freeze them (no collection
    walks them again) and collect young objects less often. At thousands of guests the
    collector's walks over long-lived objects were a visible share of the daemon's CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def within_bounds(policy: ResolvedPolicy, spec: GuestSpec | None) -> ResolvedPolicy:
    """``policy`` with the bounds a guest's source sets (Proxmox's ``balloon:`` and
    ``memory:``, libvirt metadata) in place of its own: whole MiB, at most the boot size,
    the minimum at most the maximum."""
    if spec is None or (spec.min_bytes is None and spec.max_bytes is None):
        return policy
    max_b = policy.max_bytes
    if spec.max_bytes is not None:
        max_b = max(min(spec.max_bytes, policy.boot_bytes) // MiB * MiB, MiB)
    min_b = policy.min_bytes if spec.min_bytes is None else -(-spec.min_bytes // MiB) * MiB
    return dataclasses.replace(policy, min_bytes=max(min(min_b, max_b), MiB), max_bytes=max_b)


def _held_for_host(ctrl: GuestController) -> bool:
    """Whether the host planner may owe ``ctrl`` memory back once the host has room."""
    policy = ctrl.policy
    return ctrl.last_reason is Reason.HOST_PRESSURE or (
        policy is not None and policy.reclaim is Reclaim.HOST_PRESSURE
    )


class Daemon:
    """Runs the control loop for every discovered guest until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        dry_run: bool | None = None,
        host_reader: Callable[[], HostSnapshot] = read_host,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.config_path = config_path
        #: --dry-run from the command line wins over the config, also across reloads.
        self._dry_run_flag = dry_run
        self.dry_run = config.daemon.dry_run if dry_run is None else dry_run
        self._read_host = host_reader
        self._clock = clock
        #: One thread for blocking file I/O (audit lines, fsynced state), in submission order,
        #: so that a slow disk never holds the event loop.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="balloond-io")
        self.audit = AuditLog(config.daemon.audit_path, executor=self._io)
        self.guests: dict[str, GuestController] = {}
        #: How each managed guest is reached, as its source found it.
        self.specs: dict[str, GuestSpec] = {}
        #: Sources that follow guests themselves (libvirt connections), started by run().
        self.sources: list[GuestSource] = []
        #: Threads for libvirt's blocking calls, shared by every libvirt guest.
        self._libvirt_executor: ThreadPoolExecutor | None = None
        self.host: HostSnapshot | None = None
        self.host_caps: dict[str, int] = {}
        self.started_s = clock()
        self.cycles = 0
        #: Called with (controller, change) for every balloon change (see subscribe()).
        self._listeners: list[Listener] = []
        self._stop = asyncio.Event()
        #: Owns every long-lived task: guests, daemon-wide loops, and the service's adapters.
        self.supervisor = Supervisor(self._stop)
        self.store = StateStore(Path(config.daemon.state_dir))
        #: Intents restored from the state store; kept for guests not (yet) present.
        self.saved_intents: dict[str, Intent] = self.store.load()
        #: The last reload's error, shown by `balloonctl status` until a reload succeeds.
        self.reload_error: str | None = None
        self.reload_failures = 0
        #: Set once the first discovery is done (systemd's READY=1).
        self._ready = asyncio.Event()
        #: Called with True as a reload starts and False when it ends (systemd's RELOADING=1).
        self._reload_hooks: list[Callable[[bool], None]] = []

    # --- configuration -------------------------------------------------------------------
    def timing(self) -> Timing:
        d = self.config.daemon
        return Timing(
            poll_interval_s=d.poll_interval_s,
            qmp_timeout_s=d.qmp_timeout_s,
            connect_timeout_s=d.qmp_timeout_s,
            history_len=d.history_len,
            device_recheck_s=d.device_recheck_s,
            timeline_s=d.timeline_s,
            timeline_interval_s=d.timeline_interval_s,
        )

    def _policy_resolver(
        self, guest: str, intent: Intent | None
    ) -> tuple[str, Callable[[int], ResolvedPolicy]]:
        spec = self.specs.get(guest)
        name = intent.policy_override if intent and intent.policy_override else None
        if name is None or name not in self.config.policies:
            name = spec.policy if spec is not None and spec.policy else None
        if name is None or name not in self.config.policies:
            if spec is not None and spec.policy:
                log.warning(
                    "guest %s: its source names policy %r, which is not defined", guest, spec.policy
                )
            name = self.config.policy_name_for(guest)
        policy = self.config.policies[name]

        def resolve(boot_bytes: int) -> ResolvedPolicy:
            return within_bounds(policy.resolve(boot_bytes, name=name), spec)

        return name, resolve

    def reload(self) -> str | None:
        """Re-read the config file; apply it if valid. Returns the error text, or None."""
        for hook in self._reload_hooks:
            hook(True)
        try:
            return self._reload()
        finally:
            for hook in self._reload_hooks:
                hook(False)

    def _reload(self) -> str | None:
        if self.config_path is None:
            return "no config file to reload"
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.reload_error = "; ".join(exc.lines())
            self.reload_failures += 1
            log.error("reload refused, keeping the running config: %s", self.reload_error)
            return self.reload_error
        if config.libvirt != self.config.libvirt:
            log.warning("[libvirt] changed: the new connections take effect at the next restart")
        self.apply_config(config)
        self.reload_error = None
        log.info("config reloaded from %s", self.config_path)
        return None

    def refresh_policy(self, ctrl: GuestController) -> None:
        """Re-resolve a guest's policy after its override changed."""
        name, resolver = self._policy_resolver(ctrl.name, ctrl.intent)
        ctrl.set_policy(name, resolver)

    def intents_changed(self) -> asyncio.Future[None]:
        """Persist every guest's intent (after each operator command, an expired hold, and
        at the end). The write and its fsync run in the I/O thread, in order; the returned
        future ends once it is on disk (or failed, which is logged): an operator command
        awaits it, the control loop need not."""
        for name, ctrl in self.guests.items():
            self.saved_intents[name] = ctrl.intent
        snapshot = dict(self.saved_intents)
        return asyncio.get_running_loop().run_in_executor(self._io, self._save, snapshot)

    def _save(self, intents: dict[str, Intent]) -> None:
        try:
            self.store.save(intents)
        except OSError as exc:
            log.error("cannot save operator state to %s: %s", self.store.path, exc)

    def status(self) -> dict[str, Any]:
        """Daemon-wide status for balloonctl, MQTT and sd_notify."""
        guests = [c.status() for c in sorted(self.guests.values(), key=lambda c: c.name)]
        host = self.host
        return {
            "guests": guests,
            "summary": self.summary(),
            "dry_run": self.dry_run,
            "config": str(self.config_path) if self.config_path else None,
            "reload_error": self.reload_error,
            "task_failures": self.supervisor.failures(),
            "host": (
                {
                    "total_bytes": host.total_bytes,
                    "available_bytes": host.available_bytes,
                    "pressure": bool(self.host_caps),
                }
                if host
                else None
            ),
        }

    def summary(self) -> dict[str, int]:
        """Counts for a one-line status: managed, reclaimed bytes, under pressure."""
        reclaimed = 0
        pressured = 0
        by_state: dict[str, int] = {}
        for ctrl in self.guests.values():
            by_state[ctrl.link.state.value] = by_state.get(ctrl.link.state.value, 0) + 1
            if ctrl.history and ctrl.link.boot_bytes:
                reclaimed += max(0, ctrl.link.boot_bytes - ctrl.history[-1].actual_bytes)
            d = ctrl.last_decision
            if d is not None and d.reason in PRESSURE_REASONS:
                pressured += 1
        return {
            "guests": len(self.guests),
            "active": by_state.get(LinkState.ACTIVE.value, 0),
            "reclaimed_bytes": reclaimed,
            "under_pressure": pressured,
        }

    def apply_config(self, config: Config) -> None:
        """Switch to a new, already validated config without dropping links or history."""
        self.config = config
        if self._dry_run_flag is None:
            self.dry_run = config.daemon.dry_run
        self.audit.close()
        self.audit = AuditLog(config.daemon.audit_path, executor=self._io)
        timing = self.timing()
        for name, ctrl in self.guests.items():
            policy_name, resolver = self._policy_resolver(name, ctrl.intent)
            ctrl.set_policy(policy_name, resolver)
            ctrl.set_timing(timing)
            ctrl.audit = self.audit
            ctrl.dry_run = self.dry_run
        self.rescan()

    # --- what adapters use (balloond.adapters.port.DaemonPort) ---------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every balloon change; returns the unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def on_reload(self, hook: Callable[[bool], None]) -> None:
        """Call ``hook(True)`` as each reload starts and ``hook(False)`` when it ends."""
        self._reload_hooks.append(hook)

    async def wait_ready(self) -> None:
        """Return once the first discovery is done."""
        await self._ready.wait()

    def task_failures(self) -> list[TaskFailure]:
        return [f for _, f in sorted(self.supervisor.failed.items())]

    def commands(self, *, allowed: Iterable[str] = OPS) -> Commands:
        """The command layer over this daemon, limited to the ``allowed`` operations."""
        return Commands(self, allowed=allowed)

    # --- guests --------------------------------------------------------------------------
    def _found(self) -> list[list[GuestSpec]]:
        """Guests from the sources other than the config's sockets: Proxmox, libvirt."""
        found: list[list[GuestSpec]] = []
        pve = self.config.proxmox
        if pve.enabled:
            found.append(proxmox_guests(config_dir=pve.config_dir, run_dir=pve.run_dir))
        for source in self.sources:
            found.append(source.specs())
        return found

    def rescan(self) -> None:
        """Start controllers for new guests and stop those that went away."""
        wanted = discover(
            static=[
                GuestSpec(g.name, Way.QMP_SHARED if g.shared else Way.QMP, str(g.qmp), "config")
                for g in self.config.guests
            ],
            globs=self.config.discovery.globs,
            shared_globs=self.config.discovery.shared_globs,
            found=self._found(),
        )
        for name in list(self.guests):
            spec = wanted.get(name)
            if spec is None or not spec.same_link(self.specs[name]):
                log.info("guest %s went away", name)
                self.guests.pop(name).stop()  # its task ends, even mid-reconnect
                self.specs.pop(name, None)
                self.supervisor.forget(f"guest:{name}")
            elif spec != self.specs[name]:
                # The same guest with new bounds or a new policy from its source.
                self.specs[name] = spec
                log.info("guest %s: its source changed its bounds or policy", name)
                self.refresh_policy(self.guests[name])
        for name, spec in wanted.items():
            if name not in self.guests:
                self._start_guest(spec)

    def _start_guest(self, spec: GuestSpec) -> None:
        name = spec.name
        self.specs[name] = spec
        intent = self.saved_intents.get(name)
        policy_name, resolver = self._policy_resolver(name, intent)
        ctrl = GuestController(
            name=name,
            link=self._link(spec),
            policy_name=policy_name,
            policy_for=resolver,
            timing=self.timing(),
            audit=self.audit,
            dry_run=self.dry_run,
            intent=intent,
            on_change=self._notify,
            clock=self._clock,
        )
        self.guests[name] = ctrl
        log.info("guest %s: %s at %s (policy %s)", name, spec.way.value, spec.address, policy_name)
        self.supervisor.start(
            f"guest:{name}",
            functools.partial(self._run_guest, ctrl),
            keep=lambda: self.guests.get(name) is ctrl and not ctrl.stopped,
        )

    def _link(self, spec: GuestSpec) -> GuestLink:
        """The link for the way the guest is reached."""
        if spec.way is Way.QMP_SHARED:
            return SharedQmpLink(spec.name, spec.address)
        if spec.way is Way.LIBVIRT:
            for source in self.sources:
                if source.owns(spec):
                    return source.link(spec)
            raise RuntimeError(f"guest {spec.name}: no libvirt connection for {spec.address}")
        return QmpLink(spec.name, spec.address)

    async def _run_guest(self, ctrl: GuestController) -> None:
        """One run of a guest's controller; after a failure, with a fresh link."""
        if ctrl.link.state is LinkState.CLOSED:
            ctrl.replace_link(self._link(self.specs[ctrl.name]))
        await ctrl.run()

    def _notify(self, ctrl: GuestController, event: ControllerEvent) -> None:
        if isinstance(event, HoldExpired):
            # A hold ran out: a restart must not bring it back (saved in the I/O thread).
            self.intents_changed()
            return
        for listener in self._listeners:
            try:
                listener(ctrl, event)
            except Exception:
                log.exception("change listener failed")

    # --- host ----------------------------------------------------------------------------
    def plan(self) -> None:
        """Read host memory and hand each guest its cap under host pressure."""
        try:
            host = self._read_host()
        except (OSError, ValueError) as exc:
            log.warning("cannot read host memory: %s", exc)
            return
        self.host = host
        reserve = self.config.host.reserve_bytes(host.total_bytes)
        if host.available_bytes >= reserve and not any(map(_held_for_host, self.guests.values())):
            # Room, and nobody to give memory back to: plan_host would find no caps. The
            # common case, and at thousands of guests their views cost a real slice of a
            # second.
            caps: dict[str, int] = {}
        else:
            pairs = []
            for ctrl in self.guests.values():
                view, policy = ctrl.view(), ctrl.policy
                if view is not None and policy is not None and ctrl.link.state is LinkState.ACTIVE:
                    pairs.append((view, policy))
            caps = plan_host(
                guests=pairs,
                host=host,
                reserve_bytes=reserve,
                now_s=self._clock(),
                poll_interval_s=self.config.daemon.poll_interval_s,
            )
        if caps != self.host_caps:
            if caps and not self.host_caps:
                log.warning(
                    "host under memory pressure: %d MiB available, reserve %d MiB",
                    host.available_bytes >> 20,
                    reserve >> 20,
                )
            elif self.host_caps and not caps:
                log.info("host memory pressure over")
        self.host_caps = caps
        for name, ctrl in self.guests.items():
            ctrl.host_cap_bytes = caps.get(name)

    async def _host_loop(self) -> None:
        while not self._stop.is_set():
            self.plan()
            self.cycles += 1
            await sleep_unless(self._stop, self.config.daemon.poll_interval_s)

    async def _discovery_loop(self) -> None:
        while not await sleep_unless(self._stop, self.config.discovery.rescan_interval_s):
            self.rescan()

    def _start_sources(self) -> None:
        """Connect to each libvirt URI of the config (once: a reload does not change them)."""
        conf = self.config.libvirt
        if not conf.uris:
            return
        # Imported here: libvirt-python is needed only where libvirt is used.
        from balloond.adapters.libvirt import LibvirtSource

        self._libvirt_executor = ThreadPoolExecutor(
            max_workers=conf.workers, thread_name_prefix="balloond-libvirt"
        )
        for uri in conf.uris:
            source = LibvirtSource(
                uri,
                executor=self._libvirt_executor,
                timeout_s=self.config.daemon.qmp_timeout_s,
                patterns=conf.domains,
                on_change=self.rescan,
            )
            self.sources.append(source)
            self.supervisor.start(
                f"libvirt:{uri}", functools.partial(source.run, self._stop), forever=True
            )

    # --- lifecycle -----------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        for ctrl in self.guests.values():
            ctrl.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        """Set once the daemon begins to stop; adapters run until it is set."""
        return self._stop

    async def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Discover, start every guest and the daemon-wide loops; return after a stop."""
        silence_qmp_library_logs()
        self._start_sources()
        self.rescan()
        if on_ready is not None:
            on_ready()
        self._ready.set()
        asyncio.get_running_loop().call_later(GC_SETTLE_S, _settle_gc)
        self.supervisor.start("host-planner", self._host_loop, forever=True)
        self.supervisor.start("discovery", self._discovery_loop, forever=True)
        try:
            await self._stop.wait()
        finally:
            self.request_stop()
            await self.supervisor.shutdown(STOP_BUDGET_S)
            saved = self.intents_changed()
            self.audit.close()
            try:
                async with asyncio.timeout(IO_DRAIN_S):
                    await saved  # the I/O thread works in order: the audit lines are out too
            except TimeoutError:
                log.error("file writes did not finish within %.0fs of the stop", IO_DRAIN_S)
            self._io.shutdown(wait=False)
            if self._libvirt_executor is not None:
                self._libvirt_executor.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")
