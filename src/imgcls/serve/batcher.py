"""Requests from concurrent clients scored together. A worker takes the oldest waiting request
and every other one already queued, up to ``max_batch`` images, and scores them in one forward
pass (in a worker thread, so the server keeps accepting requests meanwhile); requests arriving
during a pass are queued for the next. Under load (the last pass held several requests) it also
waits up to ``max_wait_ms`` for more before starting; a lone client never waits. Throughput grows
with load. ``max_batch=1`` turns batching across requests off: one request per pass, in arrival
order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Pending:
    images: torch.Tensor  # (n, C, H, W), one request's
    done: asyncio.Future


class MicroBatcher:
    """``await batcher.submit(images)`` returns ``score(images)``'s results for those images,
    computed in batches shared with other requests. ``score`` maps a (N, C, H, W) tensor to a
    list of N results."""

    def __init__(self, score: Callable[[torch.Tensor], Sequence[Any]], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.score, self.max_batch, self.max_wait = score, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Pending] | None = None
        self.worker: asyncio.Task | None = None
        self.batches: list[int] = []  # images per forward pass, for tests and statistics

    async def submit(self, images: torch.Tensor) -> list[Any]:
        if self.queue is None:  # created in the server's event loop, on first use
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.done

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            group = [await self.queue.get()]
            count = len(group[0].images)
            # Under load (the last pass shared by several requests) wait for more; alone, go:
            # a lone client never waits, and requests that arrive during a pass queue up anyway.
            busy = bool(self.batches) and self.batches[-1] > 1
            deadline = loop.time() + (self.max_wait if busy else 0.0)
            while count < self.max_batch:
                left = deadline - loop.time()
                try:
                    item = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(
                        self.queue.get(), left)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                group.append(item)
                count += len(item.images)
            await self._score(group, loop)

    async def _score(self, group: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        try:
            images = torch.cat([p.images for p in group])
            self.batches.append(len(images))
            results = await loop.run_in_executor(None, self.score, images)
        except Exception as exc:  # every waiting request hears of it; the worker lives on
            for p in group:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        start = 0
        for p in group:
            if not p.done.done():
                p.done.set_result(list(results[start:start + len(p.images)]))
            start += len(p.images)

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
