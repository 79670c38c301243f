"""The pure core: it decides, and touches nothing.

The policy engine and host planner (:mod:`balloond.core.policy`), the stats records, sizes
and units, a guest's books between polls, the error tree, the operations and their request
envelope, the daemon's typed events, and the guest link protocol every adapter that reaches
a guest implements. No I/O, no asyncio, no pydantic (the import contracts check it): frozen
values in, frozen values out.
"""
