"""Decode-step capture: one CUDA graph per batch-size bucket, replayed instead of launching the step's ~1000 small
kernels (a MoE decode step at small batches is launch-bound), with an eager fallback.

Captured steps need fixed shapes and addresses: a bucket of ``b`` rows attends to the whole slot length of the pool
(the mask hides what a row may not see), reads its token ids, slot rows and positions from static buffers, and
writes its logits to a static output. Padding rows (``n < b``) write their KV into the pool's scratch row. The
graphs point into one ``SlotCache``; a new pool needs new graphs (``reset``).

Only on CUDA. A bucket whose capture fails (an op that syncs with the host, such as the per-expert fallback of
``_grouped_mm`` for dtypes the grouped kernel lacks) runs eagerly from then on; so does everything on the CPU.
``torch.compile(mode="reduce-overhead")`` would do the same capture but recompiles for every key length; capturing
the step ourselves keeps one graph per bucket.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

# step(tokens [b], rows [b], positions [b], n_view, key_len) -> logits [b, V] fp32
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    def __init__(self, step: StepFn, device: torch.device, slots: int, slot_len: int, enabled: bool = True,
                 buckets: tuple[int, ...] = BUCKETS) -> None:
        self.step, self.device = step, device
        self.slots, self.slot_len = slots, slot_len
        self.enabled = enabled and device.type == "cuda"
        self.buckets = tuple(b for b in buckets if b <= slots) or (slots,)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.failed: set[int] = set()
        self._pool = None
        big = max(self.buckets)
        self.tokens = torch.zeros(big, dtype=torch.long, device=device)
        self.rows = torch.full((big,), slots, dtype=torch.long, device=device)  # scratch row by default
        self.positions = torch.zeros(big, dtype=torch.long, device=device)

    @property
    def mode(self) -> str:
        return "cuda-graphs" if self.enabled else "eager"

    def bucket(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_len: int) -> torch.Tensor:
        """Logits [n, V] for ``n`` decoding sequences in slots ``0..n-1`` (``tokens``, ``positions`` [n] on the
        first device)."""
        n = tokens.shape[0]
        b = self.bucket(n) if self.enabled else None
        if b is None or b in self.failed:
            rows = torch.arange(n, device=tokens.device)
            return self.step(tokens, rows, positions, n, key_len)
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(positions)
        self.tokens[n:b].zero_()
        self.positions[n:b].zero_()
        self.rows[:b].copy_(torch.arange(b, device=self.device))
        self.rows[n:b].fill_(self.slots)  # padding rows write into the scratch row
        if b not in self.graphs and not self._capture(b):
            return self.step(self.tokens[:b], self.rows[:b], self.positions[:b], b, self.slot_len)[:n]
        graph, out = self.graphs[b]
        graph.replay()
        return out[:n]

    def _capture(self, b: int) -> bool:
        args = (self.tokens[:b], self.rows[:b], self.positions[:b], b, self.slot_len)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.step(*args)  # warm-up outside the graph (allocator, lazy inits)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.step(*args)
        except RuntimeError as e:  # a host sync or an uncapturable op inside the step
            log.warning("decode step for batch bucket %d cannot be captured (%s); it runs eagerly", b, e)
            self.failed.add(b)
            torch.cuda.synchronize(self.device)
            return False
        self.graphs[b] = (graph, out)
        return True

    def reset(self) -> None:
        """Drop every graph (their memory goes back with the pool)."""
        self.graphs.clear()
        self._pool = None
