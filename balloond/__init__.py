"""balloond: a memory-balloon controller for QEMU/KVM hosts.

It connects to QEMU guests over QMP, polls their virtio-balloon statistics and moves
each balloon by a policy read from a config file. See README.md and docs in
``config/balloond.toml``.
"""

__version__ = "0.1.0"
