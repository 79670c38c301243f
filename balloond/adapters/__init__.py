"""Adapters: one module per outside thing.

QMP (:mod:`~balloond.adapters.qmp`), MQTT, the Prometheus endpoint, systemd notify, host
/proc, the control socket, the audit log file and socket discovery. Each reaches the
daemon only through :mod:`balloond.adapters.port`.
"""
