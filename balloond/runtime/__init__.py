"""What every layer above the core shares at run time: the operator's config file (schema
and loader, :mod:`balloond.runtime.config`) and the asyncio helpers
(:mod:`balloond.runtime.aio`: backoff, interruptible sleep, sure cancel)."""
