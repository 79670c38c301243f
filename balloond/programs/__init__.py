"""The programs: ``balloond`` (run, config check/schema, simulate) and ``balloonctl``."""
