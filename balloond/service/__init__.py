"""The service: the daemon that runs the core on time and wires the adapters.

The supervisor of long-lived tasks, a controller per guest, the daemon (guests, host
planner, discovery), the command layer every transport shares, the operator's persisted
state, the trace recorder, and :func:`~balloond.service.serve.serve`, which starts it all.
"""
