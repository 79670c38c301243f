"""runtime.aio's Deadline behaves as asyncio.timeout does: a late block raises
TimeoutError, a cancel from outside stays a cancel, and nothing fires once the block is
done."""

from __future__ import annotations

import asyncio

import pytest

from balloond.runtime.aio import Deadline


async def test_a_late_block_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, 0.01):
            await asyncio.sleep(10)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the deadline's own cancel was taken back


async def test_a_block_in_time_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, 10):
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)  # the timer was cancelled: nothing fires later


async def test_a_cancel_from_outside_is_not_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def waits() -> None:
        async with Deadline(loop, 10):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_and_a_deadline_in_the_same_turn_stay_a_cancel() -> None:
    loop = asyncio.get_running_loop()

    async def waits() -> None:
        async with Deadline(loop, 0):
            await asyncio.sleep(10)

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)  # inside the block, its timer due
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
