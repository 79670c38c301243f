"""The operations a control request may name, defined once.

The command layer (:mod:`balloond.commands`) executes them, ``[mqtt] allow`` in the config
names a subset of them, and ``balloonctl`` sends them. A plain module with no imports of its
own, so every layer can use it.
"""

from __future__ import annotations

from typing import Literal, get_args

#: One operation's name, as a request's ``op`` spells it.
Op = Literal["status", "set", "pause", "resume", "policy", "explain", "reload"]
#: Every operation, in the order help texts list them.
OPS: tuple[Op, ...] = get_args(Op)
#: Operations that change nothing (not logged as commands).
READ_ONLY_OPS: frozenset[Op] = frozenset({"status", "explain"})
