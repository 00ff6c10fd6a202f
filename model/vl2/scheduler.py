"""Continuous batching for one DeepSeek-VL2 instance (one GPU, or several holding its layers, see ``placement``).

Every ``step()``: admit waiting prompts while slots are free and the admission limit allows (the vision pass runs
once per image, when its first prompt is admitted), prefill admitted prompts in chunks of ``prefill_chunk``
positions up to ``prefill_tokens_per_step`` (so a long prompt never stalls the decoders for more than one chunk
budget), then one decode step for every decoding sequence; finished sequences retire at once and their slots are
refilled at the next step. A request (one image, all of its prompts) is returned when its last prompt finishes.

Memory. The KV pool (``kvpool.SlotCache``) holds as many slots as ``plan.max_batch`` finds for the budget with the
same estimate ``vlwatch model plan`` prints, capped by ``max_batch``; the slot length is the longest queued request
(prompt + ``max_new_tokens``); a longer request later makes the scheduler drain and reallocate. On CUDA out of
memory (or an ``alloc_hook`` that raises it, for tests) the scheduler halves its admission limit, puts the running
prompts back at the head of the queue (greedy decoding recomputes the same ids), frees the pool and continues. Only
a request that runs out of memory alone fails, with a message that says what it needs and what the budget is. The
limit doubles back after ``recover_after`` prompts finish without running out of memory (the pool grows at the
next moment no prompt holds it).

Greedy only (what the analyzers run): a row's ids do not depend on what else is in the batch.
``submit`` may be called from other threads (preprocessing); ``step`` runs in the one thread that owns the GPU.
(A little over 350 lines: admission, prefill, decode and out-of-memory recovery all edit one slot table.)

Why this module is long: admission, chunked prefill, decode and retirement are one loop over one slot pool; split,
each step would need the others' bookkeeping to be understood.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

import torch

from model.vl2.generation import GenerationConfig, GenerationOutput, _choose, repeats_tail
from model.vl2.metrics import SchedulerMetrics
from model.vl2.modeling import DeepseekVL2Model
from model.vl2.placement import Placement
from model.vl2.plan import Workload, alone_message, max_batch
from model.vl2.requests import ImageRequest, PromptSpec, RequestResult
from model.vl2.runner import StepRunner

AllocHook = Callable[[str, int, int], None]  # (stage: pool|vision|prefill|decode, rows, positions) -> may raise OOM
_GREEDY = GenerationConfig()


@dataclass
class SchedulerConfig:
    memory_budget: int | None = None  # bytes per device for weights + KV pool + activations; None: max_batch only
    max_batch: int = 64  # concurrent prompts at most
    prefill_chunk: int = 2048  # a 1024x768 grounding prompt (1435 positions) in one forward; longer ones chunked
    prefill_tokens_per_step: int = 4096  # prompt positions between two decode steps
    slot_len: int | None = None  # the least slot length; slots grow to the longest queued request
    recover_after: int = 256
    capture: bool = True  # CUDA graphs for the decode step (CUDA only; eager elsewhere)


@dataclass(eq=False)
class _Req:
    request: ImageRequest
    order: int
    outputs: list[tuple[list[int], list[float], str] | None]
    unprefilled: int  # prompts not prefilled yet: the image tokens are kept until it reaches 0
    image_tokens: torch.Tensor | None = None
    error: str | None = None


@dataclass(eq=False)
class _Seq:
    req: _Req
    index: int
    spec: PromptSpec
    slot: int = -1
    length: int = 0  # positions in the cache
    embeds: torch.Tensor | None = None  # [T, D] while prefilling
    tokens: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    finish: str = "length"

    @property
    def prompt_len(self) -> int:
        return int(self.spec.input_ids.shape[0])


class Scheduler:
    def __init__(self, model: DeepseekVL2Model, config: SchedulerConfig | None = None,
                 placement: Placement | None = None, metrics: SchedulerMetrics | None = None,
                 alloc_hook: AllocHook | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.runner = StepRunner(model, placement, self.config.capture)
        self.model_cfg = model.cfg
        self.placement = placement
        self.metrics, self.alloc_hook = metrics, alloc_hook
        self.limit = self.config.max_batch  # what is admitted at most; halved on OOM
        self.stats: Counter[str] = Counter()
        self._inbox: deque[ImageRequest] = deque()
        self.waiting: deque[_Seq] = deque()
        self.prefilling: list[_Seq] = []
        self.owner: list[_Seq | None] = []  # per slot; decoding sequences hold slots 0 .. n_dec - 1
        self.n_dec = 0
        self._order = 0
        self._since_oom = 0
        self._pool_limit = 0  # the admission limit the pool was sized with
        self._ready: list[_Req] = []  # requests without prompts: returned at the next step
        self._stage = ""  # the forward running now (what an out-of-memory error interrupted)
        self._culprit: _Req | None = None

    # ---- the caller's side -----------------------------------------------------------------------------------
    def submit(self, request: ImageRequest) -> None:
        for p in request.prompts:
            c = p.config
            if c.do_sample or c.repetition_penalty != 1.0:
                raise ValueError(f"request {request.key!r}: the scheduler decodes greedily without repetition "
                                 "penalty (what the analyzers run); use generation.generate for sampling")
        self._inbox.append(request)  # deque.append is atomic: safe from preprocessing threads

    @torch.no_grad()
    def step(self) -> list[RequestResult]:
        while self._inbox:
            self._enqueue(self._inbox.popleft())
        done, self._ready = self._ready, []
        tokens_before = self.stats["tokens"]
        try:
            self._admit(done)
            self._prefill(done)
            self._decode(done)
        except torch.OutOfMemoryError as e:
            self._out_of_memory(e, done)
        self._culprit = None
        self._report(done, self.stats["tokens"] - tokens_before)
        return [self._result(r) for r in done]

    def run(self, requests: Iterable[ImageRequest] = ()) -> dict[Hashable, RequestResult]:
        """Submit ``requests`` and step until nothing is left; results by key."""
        for r in requests:
            self.submit(r)
        out: dict[Hashable, RequestResult] = {}
        while not self.idle:
            for res in self.step():
                out[res.key] = res
        return out

    @property
    def idle(self) -> bool:
        return not (self._inbox or self._ready or self.waiting or self.prefilling or self.n_dec)

    @property
    def active(self) -> int:
        return len(self.prefilling) + self.n_dec

    # ---- admission -------------------------------------------------------------------------------------------
    def _enqueue(self, request: ImageRequest) -> None:
        req = _Req(request, self._order, [None] * len(request.prompts), len(request.prompts))
        self._order += 1
        self.waiting.extend(_Seq(req, i, p) for i, p in enumerate(request.prompts))
        if not request.prompts:
            self._ready.append(req)

    def _admit(self, done: list[_Req]) -> None:
        while self.waiting and self.active < self.limit:
            seq = self.waiting[0]
            if seq.spec.config.max_new_tokens == 0:  # nothing to generate
                self.waiting.popleft()
                seq.req.unprefilled -= 1
                self._finish(seq, done)
                continue
            cache = self.runner.cache
            if cache is None or seq.spec.positions > cache.slot_len or (
                    not self.active and self.limit != self._pool_limit):
                if self.active:
                    return  # the pool changes only when no prompt holds it: drain first
                if not self._allocate(seq, done):
                    continue
            slot = next((s for s in range(len(self.owner) - 1, self.n_dec - 1, -1) if self.owner[s] is None), None)
            if slot is None:
                return
            req = seq.req
            if req.image_tokens is None and req.request.crops:
                self._culprit = req
                self._hook("vision", int(req.request.tiles.shape[0]), 0)
                req.image_tokens = self.runner.encode_image(req.request.tiles, req.request.crops)  # [N, D]
            self.waiting.popleft()
            seq.slot, self.owner[slot] = slot, seq
            self.prefilling.append(seq)
            self.stats["max_active"] = max(self.stats["max_active"], self.active)

    def _target_slots(self, slot_len: int, seq: _Seq) -> int:
        """Slots of ``slot_len`` positions the budget holds with the estimate ``plan`` uses, capped by the limit."""
        cap = min(self.limit, self.config.max_batch)
        if self.config.memory_budget is None:
            return cap
        return max_batch(self.model_cfg, self.config.memory_budget, self._workload(seq, slot_len),
                         self.runner.dtype, self.placement, cap)

    def _workload(self, seq: _Seq, positions: int) -> Workload:
        tiles = seq.req.request.crops[0] if seq.req.request.crops else (1, 1)
        text = max(0, positions - self.model_cfg.image_tokens(*tiles))
        return Workload(tiles, text, 0, self.config.prefill_chunk)

    def _allocate(self, seq: _Seq, done: list[_Req]) -> bool:
        """(Re)allocate the pool for the queue head; False when its request failed instead."""
        self.runner.free_cache()
        longest = max(s.spec.positions for s in self.waiting)
        slot_len = -(-max(longest, self.config.slot_len or 0) // 16) * 16
        slots = self._target_slots(slot_len, seq)
        while True:
            if slots < 1:
                self._fail(seq.req, "the memory budget holds no KV slot for it", done)
                return False
            try:
                self._hook("pool", slots, slot_len)
                self.runner.new_cache(slots, slot_len)
                self.owner, self.n_dec, self._pool_limit = [None] * slots, 0, self.limit
                self.stats["pools"] += 1
                return True
            except torch.OutOfMemoryError as e:
                self.runner.free_cache()
                self._count_oom()
                if slots == 1:
                    self._fail(seq.req, f"out of memory allocating one KV slot ({e})", done)
                    return False
                slots //= 2
                self.limit = min(self.limit, slots)

    # ---- prefill and decode ------------------------------------------------------------------------------------
    def _prefill(self, done: list[_Req]) -> None:
        budget = self.config.prefill_tokens_per_step
        for seq in list(self.prefilling):
            while budget > 0 and seq.length < seq.prompt_len:
                if seq.embeds is None:
                    img = seq.req.image_tokens
                    seq.embeds = self.runner.prompt_embeds(seq.spec.input_ids, seq.spec.image_mask,
                                                           img if img is not None else torch.zeros(0, 1))
                t = min(self.config.prefill_chunk, seq.prompt_len - seq.length, budget)
                last = seq.length + t == seq.prompt_len
                self._culprit = seq.req
                self._hook("prefill", 1, t)
                logits = self.runner.prefill(seq.slot, seq.length, seq.embeds[seq.length:seq.length + t], last)
                seq.length += t
                budget -= t
                self.stats["prefill_tokens"] += t
                if logits is not None:
                    self._prefilled(seq, logits, done)
            if budget <= 0:
                return

    def _prefilled(self, seq: _Seq, logits: torch.Tensor, done: list[_Req]) -> None:
        seq.embeds = None
        self.prefilling.remove(seq)
        seq.req.unprefilled -= 1
        if seq.req.unprefilled == 0:
            seq.req.image_tokens = None
        tok, p = _choose(logits[None], None, _GREEDY, None)  # the first generated token
        if self._emit(seq, int(tok), float(p)):
            self.owner[seq.slot] = None
            self._finish(seq, done)
            return
        target = self.n_dec  # decoding sequences stay in slots 0 .. n_dec - 1
        other = self.owner[target]
        assert self.runner.cache is not None
        if other is None:
            self.runner.cache.move(seq.slot, target, seq.length)
            self.owner[seq.slot] = None
        elif other is not seq:
            self.runner.cache.swap(seq.slot, target, seq.length, other.length)
            other.slot, self.owner[seq.slot] = seq.slot, other
        seq.slot, self.owner[target] = target, seq
        self.n_dec += 1

    def _decode(self, done: list[_Req]) -> None:
        n = self.n_dec
        if not n:
            return
        seqs = self.owner[:n]
        assert all(s is not None for s in seqs)
        positions = [s.length for s in seqs]
        self._culprit = None
        self._hook("decode", n, max(positions) + 1)
        logits = self.runner.decode(torch.tensor([s.tokens[-1] for s in seqs]), torch.tensor(positions),
                                    max(positions) + 1)  # [n, V]
        tok, p = _choose(logits, None, _GREEDY, None)
        tok_l, p_l = tok.tolist(), p.tolist()  # the one host sync per step
        self.stats["decode_steps"] += 1
        self.stats["tokens"] += n
        finished = []
        for i, seq in enumerate(seqs):
            seq.length += 1
            if self._emit(seq, tok_l[i], p_l[i]):
                finished.append(seq)
        for seq in reversed(finished):  # highest slot first: the sequence moved into a hole is still running
            self._retire(seq.slot)
            self._finish(seq, done)

    def _emit(self, seq: _Seq, tok: int, prob: float) -> bool:
        """Record one generated token; True when the sequence is finished (``generate``'s stop rules)."""
        c = seq.spec.config
        if c.eos_token_id is not None and tok == c.eos_token_id:
            seq.finish = "eos"
            return True
        seq.tokens.append(tok)
        seq.probs.append(prob)
        if repeats_tail(seq.tokens, c.repeat_ngram, c.repeat_times):
            seq.finish = "repetition"
            return True
        return len(seq.tokens) >= c.max_new_tokens

    def _retire(self, slot: int) -> None:
        last = self.n_dec - 1
        moved = self.owner[last]
        if slot != last and moved is not None and self.runner.cache is not None:
            self.runner.cache.move(last, slot, moved.length)
            moved.slot, self.owner[slot] = slot, moved
        self.owner[last] = None
        self.n_dec -= 1

    def _finish(self, seq: _Seq, done: list[_Req]) -> None:
        req = seq.req
        req.outputs[seq.index] = (seq.tokens, seq.probs, seq.finish)
        seq.slot = -1
        self._since_oom += 1
        if self._since_oom >= self.config.recover_after and self.limit < self.config.max_batch:
            self.limit, self._since_oom = min(self.config.max_batch, 2 * self.limit), 0
        if all(o is not None for o in req.outputs):
            done.append(req)

    # ---- out of memory -----------------------------------------------------------------------------------------
    def _out_of_memory(self, err: torch.OutOfMemoryError, done: list[_Req]) -> None:
        self._count_oom()
        active = sorted(self.prefilling + [s for s in self.owner[:self.n_dec] if s is not None],
                        key=lambda s: (s.req.order, s.index))
        culprit = self._culprit or (active[0].req if active else None)
        alone = not active if self._stage == "vision" else len(active) <= 1  # nothing else held memory
        if not alone:
            self.limit = max(1, len(active) // 2)
        for seq in active:  # back to the head of the queue, in their order; greedy recomputes the same ids
            if seq.length >= seq.prompt_len:
                seq.req.unprefilled += 1
            seq.slot, seq.length, seq.embeds, seq.tokens, seq.probs, seq.finish = -1, 0, None, [], [], "length"
        self.waiting.extendleft(reversed(active))
        self.prefilling, self.owner, self.n_dec = [], [], 0
        self.runner.free_cache()
        if alone and culprit is not None:
            self._fail(culprit, f"out of memory with nothing else running ({err})", done)

    def _fail(self, req: _Req, why: str, done: list[_Req]) -> None:
        work = self._workload(_Seq(req, 0, req.request.prompts[0]), max(p.positions for p in req.request.prompts))
        req.error = alone_message(self.model_cfg, work, self.runner.dtype, self.placement,
                                  self.config.memory_budget, why)
        self.waiting = deque(s for s in self.waiting if s.req is not req)
        self.stats["failed"] += 1
        done.append(req)

    def _count_oom(self) -> None:
        self.stats["oom_shrinks"] += 1
        self._since_oom = 0
        if self.metrics is not None:
            self.metrics.oom_shrinks.inc()

    # ---- results and figures -----------------------------------------------------------------------------------
    def _result(self, req: _Req) -> RequestResult:
        if req.error is not None:
            return RequestResult(req.request.key, None, req.error)
        outs = [o for o in req.outputs if o is not None]
        return RequestResult(req.request.key, GenerationOutput(
            tokens=[o[0] for o in outs], probs=[o[1] for o in outs], finish=[o[2] for o in outs],
            prompt_tokens=[int(p.input_ids.shape[0]) for p in req.request.prompts]))

    def _report(self, done: list[_Req], new_tokens: int) -> None:
        self.stats["images"] += len(done)
        if self.metrics is None:
            return
        cache = self.runner.cache
        used = sum(s.length for s in self.owner if s is not None)
        self.metrics.observe_step(waiting=len(self.waiting), active=self.active, decoding=self.n_dec,
                                  new_tokens=new_tokens, images=len(done), kv_used=used,
                                  kv_capacity=cache.slots * cache.slot_len if cache is not None else 0,
                                  device=self.runner.first)

    def _hook(self, stage: str, rows: int, positions: int) -> None:
        self._stage = stage
        if self.alloc_hook is not None:
            self.alloc_hook(stage, rows, positions)
