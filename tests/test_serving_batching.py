"""The replica's burst batcher, on a real event loop with a recording `run`."""

from __future__ import annotations

import asyncio

import pytest

from vbon.serving.batching import BurstBatcher


def _batcher(max_size: int = 64, gap_s: float = 0.05, max_wait_s: float = 1.0, hold: float = 0):
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(hold)
        return [2 * i for i in items]

    return BurstBatcher(run, max_size, gap_s, max_wait_s), sizes


async def _spread(batcher: BurstBatcher, items: range, every_s: float) -> list[int]:
    async def one(i: int) -> int:
        await asyncio.sleep(i * every_s)
        return await batcher.submit(i)

    return await asyncio.gather(*(one(i) for i in items))


def test_a_burst_that_arrives_over_time_is_one_batch() -> None:
    """64 requests, one per ms: 64 ms in all, longer than a fixed 10 ms wait, one batch here."""
    batcher, sizes = _batcher(gap_s=0.05)
    results = asyncio.run(_spread(batcher, range(64), every_s=0.001))
    assert results == [2 * i for i in range(64)]
    assert sizes == [64]


def test_requests_apart_by_more_than_the_gap_are_separate_batches() -> None:
    batcher, sizes = _batcher(gap_s=0.02)
    asyncio.run(_spread(batcher, range(3), every_s=0.3))
    assert sizes == [1, 1, 1]


def test_batches_are_capped_by_size_and_by_the_wait_since_the_first() -> None:
    batcher, sizes = _batcher(max_size=4)
    asyncio.run(_spread(batcher, range(10), every_s=0))
    assert sizes == [4, 4, 2]

    batcher, sizes = _batcher(gap_s=0.2, max_wait_s=0.1)  # a steady trickle never goes quiet
    asyncio.run(_spread(batcher, range(30), every_s=0.01))
    assert len(sizes) >= 2 and sum(sizes) == 30 and max(sizes) < 30


def test_requests_that_arrive_while_a_batch_runs_form_the_next() -> None:
    batcher, sizes = _batcher(gap_s=0.01, hold=0.3)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.1)  # the first batch is running
        await asyncio.gather(first, *(batcher.submit(i) for i in range(1, 6)))

    asyncio.run(main())
    assert sizes == [1, 5]


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("replica fault")
        return items

    async def main() -> None:
        batcher = BurstBatcher(run, 8, 0.01, 1.0)
        failed = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(e, RuntimeError) for e in failed)
        assert await batcher.submit(7) == 7

    asyncio.run(main())
    assert [len(c) for c in calls] == [3, 1]


@pytest.mark.parametrize("cancelled", [0, 2])
def test_callers_that_gave_up_before_their_batch_are_left_out(cancelled: int) -> None:
    batcher, sizes = _batcher(gap_s=0.01, hold=0.2)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0)
        for task in waiting[:cancelled]:
            task.cancel()
        await asyncio.gather(first, *waiting, return_exceptions=True)

    asyncio.run(main())
    assert sizes == [1, 4 - cancelled]
