"""Dynamic batching for a serving replica: the requests of one burst share one batched call.

A fixed wait (Serve's `serve.batch`: a batch closes `batch_wait_timeout_s` after its first
request) splits a burst that takes longer than the wait to arrive: 64 clients sending at once
become a batch of the first 2 or 3 and one of the rest, and closed-loop clients keep that split
round after round. Here a batch stays open while requests keep coming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BurstBatcher(Generic[T, R]):
    """Groups concurrent `submit` calls into calls of `run` (items -> one result per item).

    A batch opens with the first waiting item and takes every item that arrives until none has
    come for `gap_s`, it holds `max_size` items, or `max_wait_s` have passed since it opened.
    So a lone request waits `gap_s`, and a burst of any size is one batch. One batch runs at a
    time; the items that arrive meanwhile form the next."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        max_size: int,
        gap_s: float,
        max_wait_s: float,
    ) -> None:
        self.run, self.max_size, self.gap_s, self.max_wait_s = run, max_size, gap_s, max_wait_s
        self.queue: asyncio.Queue[tuple[T, asyncio.Future]] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        batch = [await self.queue.get()]
        opened = time.monotonic()
        while len(batch) < self.max_size:
            left = self.max_wait_s - (time.monotonic() - opened)
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), min(self.gap_s, left)))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        while True:
            batch = [(item, f) for item, f in await self._collect() if not f.done()]
            if not batch:
                continue
            try:
                results = await self.run([item for item, _ in batch])
            except Exception as exc:  # every caller of the batch gets it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), result in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(result)
