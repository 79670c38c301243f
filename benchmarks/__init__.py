"""balloond's benchmarks: how the daemon scales and how well its policy works.

``python -m benchmarks.run [--quick]`` (``make bench``, ``make bench-quick``) runs them all
and writes ``benchmarks/RESULTS.md`` with the charts next to it. Benchmarks measure and
report; they assert nothing (tests do that).
"""
