"""balloond's test kit, kept out of the wheel: the lab (real QEMU guests booted from a tiny
Linux image), the QMP simulator (fleets of QEMU-compatible sockets) and the demo. The tests,
the benchmarks and ``make demo`` use it; ``make venv`` puts it on the venv's path."""
