"""The replica's decode loop: continuous batching of its requests on one thread.

Static batches wait for their longest row, and a burst split in two stays split: 64 closed-loop
clients become a batch of 62 and one of 2, which costs as long as the 62, round after round.
Here a request joins the running batch at the next decoding step (`CompletionEngine.admit`) and
leaves it as soon as its samples end, so the engine never waits for a batch to fill or drain.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vbon.serving.engine import CompletionEngine, Job, Running


@dataclass
class _Request:
    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_events: Callable[[list[dict]], None] | None  # a stream's per-step events


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if not future.done():  # the caller may have given up
        future.set_exception(error) if error else future.set_result(result)


class ContinuousBatcher:
    """Runs `engine` on a thread of its own for the requests `submit`ted from an event loop.

    While the engine is idle, a batch opens with the first request and takes every request that
    arrives until none has come for `gap_s` or `max_wait_s` have passed since it opened, so a
    burst is prefilled together. While it decodes, the requests that came during a step join
    after it, up to `max_jobs` jobs in the batch; the rest wait their turn in order."""

    def __init__(
        self, engine: CompletionEngine, max_jobs: int, gap_s: float, max_wait_s: float
    ) -> None:
        self.engine, self.max_jobs, self.gap_s, self.max_wait_s = (
            engine,
            max_jobs,
            gap_s,
            max_wait_s,
        )
        self.inbox: queue.Queue[_Request] = queue.Queue()
        threading.Thread(target=self._loop, name="vbon-decode", daemon=True).start()

    async def submit(
        self, job: Job, on_events: Callable[[list[dict]], None] | None = None
    ) -> list[dict]:
        """The job's choices (`CompletionEngine.run`); `on_events` gets each step's non-empty
        events (`CompletionEngine.step`) on the caller's loop, in order, before the choices."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.inbox.put(_Request(job, loop, future, on_events))
        return await future

    def _collect(self, waiting: deque[_Request]) -> None:
        """Move the inbox to `waiting`; when nothing runs or waits, block for a burst first."""
        if not waiting and not self.engine.running:
            waiting.append(self.inbox.get())
            opened = time.monotonic()
            while (left := self.max_wait_s - (time.monotonic() - opened)) > 0:
                try:
                    waiting.append(self.inbox.get(timeout=min(self.gap_s, left)))
                except queue.Empty:
                    break
        while True:
            try:
                waiting.append(self.inbox.get_nowait())
            except queue.Empty:
                return

    def _loop(self) -> None:
        waiting: deque[_Request] = deque()
        owners: dict[int, _Request] = {}
        while True:
            self._collect(waiting)
            room = self.max_jobs - self.engine.running  # counted once: it walks every row
            joining = [waiting.popleft() for _ in range(min(room, len(waiting)))]
            live = [r for r in joining if not r.future.done()]  # callers that gave up are left out
            try:
                handles = self.engine.admit(
                    [r.job for r in live], [r.on_events is not None for r in live]
                )
                for h, r in zip(handles, live, strict=True):
                    if h.done:  # answered at once (max_tokens 0)
                        self._deliver(
                            r, h, [{"index": j, "choice": c} for j, c in enumerate(h.choices)]
                        )
                    else:
                        owners[id(h)] = r
                for h, events in self.engine.step():
                    self._deliver(owners.pop(id(h)) if h.done else owners[id(h)], h, events)
            except Exception as exc:  # every request in the batch gets it; the next batch runs
                self.engine.reset()
                for r in [*owners.values(), *live]:
                    r.loop.call_soon_threadsafe(_settle, r.future, None, exc)
                owners.clear()

    @staticmethod
    def _deliver(request: _Request, handle: Running, events: list[dict]) -> None:
        """A step's events to a stream, then the choices once the job is done."""
        if events and request.on_events is not None:
            request.loop.call_soon_threadsafe(request.on_events, events)
        if handle.done:
            request.loop.call_soon_threadsafe(_settle, request.future, handle.choices)
