"""Continuous batching with chunked prefill, admission in submission order, and preemption.

Each step spends a token budget: running requests first (one decode token, or the next
prefill chunk), then waiting requests in the order they were submitted, so the order
the optimiser chose reaches the prefix cache. A waiting request whose next uncached
block is being computed right now by a running request waits one step and then hits
the cache instead of computing the same prefix twice.

When pages run out, a running request is preempted through a policy (``preemption.py``) that
chooses the victim and whether its pages are dropped (recompute) or copied to the host tier
(swap, Pie). A swapped-out request waits at the head of the queue and is resumed before any
prefix matching; the copies a step needs travel with its ``ScheduledBatch``.

A decoding request may carry speculative tokens (``seq.draft_token_ids``, ``engine_backend.spec``): they are
scheduled after its one real token, as far as the budget and the pool allow, and cut otherwise.

Every prefill chunk is cut so that the request would fit the whole budget alone
(``KVCacheManager.max_chunk``, the rule behind the constructor's minimum budget), so an
accepted request always runs once it is alone. If it still does not fit alone, cached pages
are in the way: the prefix cache is emptied and the request reruns from nothing with no
other request beside it. Only a request larger than the constructor promised finishes with
an error, which says the budget it needs; a step never schedules nothing while work waits.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .kv import KVCacheManager
from .preemption import RecomputePreemption
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    swap_out: list[tuple[str, int, int]] = field(default_factory=list)  # (type, device page, host page)
    swap_in: list[tuple[str, int, int]] = field(default_factory=list)  # (type, host page, device page)

    def __bool__(self) -> bool:
        return bool(self.seqs)

    @property
    def has_copies(self) -> bool:
        return bool(self.swap_out or self.swap_in)


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 preemption=None):
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.preemption = preemption or RecomputePreemption()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_swapped_preemptions = 0  # of them, the victim's pages went to the host tier
        self.num_demotions = 0  # running requests moved to stream from the host tier
        self.num_promotions = 0  # streamed requests moved back to the device
        self._stream_used: Counter = Counter()
        self._moved: set = set()
        self._demoted: set = set()
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.host_cached_prompt_tokens = 0  # of the cached ones, served from the host tier
        self._pending = Counter()  # block keys being computed by running prefills

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----------------------------------------------------------------------
    def schedule(self) -> tuple[ScheduledBatch, list[Sequence]]:
        """The batch for this step, and requests that can never fit (finished with an error)."""
        batch, failed = ScheduledBatch(), []
        budget = self.max_num_batched_tokens
        self._stream_used = Counter()  # blocks per type streamed from the host tier this step
        self._moved = set()  # requests with copies into the device this step: never demoted in it
        self._demoted = set()  # requests moved to the host this step: not promoted back in it
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk(seq, budget)
            if seq.streamed:
                if not self._run_streamed(seq, n):  # over this step's share: it waits on the host
                    self._preempt(self.running.pop(i))
                    continue
            else:
                fits = self.kv.allocate(seq, n)
                while not fits and (j := self._victim(i + 1)) is not None:
                    if not self._demote(self.running[j], 1, count=False):  # it runs on from the host, or waits
                        self._preempt(self.running.pop(j))
                    fits = self.kv.allocate(seq, n)
                if not fits and not (self._demote(seq, n, count=False) and self._run_streamed(seq, n)):
                    if i == 0 and seq.exclusive:  # alone from an empty cache and still short: never fits
                        self.running.pop(0)
                        self._unpend(seq)
                        self.kv.free(seq)
                        failed.append(self._fail(seq))
                    elif len(self.running) > 1:  # the others hold no device page it could take: it waits
                        self._preempt(self.running.pop(i))
                    else:  # alone but not exclusive, it starts over from an empty cache in _admit
                        self._preempt(self.running.pop(i), may_swap=False)
                    continue
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
            i += 1
        if len(batch.seqs) == len(self.running):
            self._admit(batch, budget, failed)
        batch.swap_out, batch.swap_in = self.kv.take_copies()
        return batch, failed

    def _victim(self, start: int) -> int | None:
        """Index of the running request (from ``start`` on, holding device pages) the policy gives up first."""
        held = [j for j in range(start, len(self.running))
                if not self.running[j].streamed and self.running[j] not in self._moved]
        return held[self.preemption.choose_victim([self.running[j] for j in held])] if held else None

    # ---- Pie's expansion: running requests streamed from the host tier -----------------------------
    @property
    def streaming(self) -> bool:
        """Whether requests may run from the host tier: the KV manager has staging for them (the engine
        gives it none under recompute preemption)."""
        return any(self.kv.stream_slots.values())

    def _stream_fits(self, blocks: dict[str, int]) -> bool:
        return all(self._stream_used[t] + b <= self.kv.stream_limit(t) for t, b in blocks.items() if b)

    def _demote(self, seq: Sequence, n: int, count: bool) -> bool:
        """Keep ``seq`` running from the host tier, if streaming is on, its share has room and ``seq`` got
        no page this step that a copy-out could read before it is written (admitted, resumed, promoted).
        ``count``: it is already in this step's batch, so its blocks count against the share now."""
        blocks = self.kv.stream_blocks(seq, n)
        if not self.streaming or seq in self._moved or not self._stream_fits(blocks) or not self.kv.demote(seq):
            return False
        if count:
            self._stream_used.update(blocks)
        self._demoted.add(seq)
        self.num_demotions += 1
        return True

    def _resume_streamed(self, seq: Sequence, n: int) -> bool:
        """A swapped-out request the device has no room for runs on from the host, within the share."""
        blocks = self.kv.stream_blocks(seq, n)
        if not self.streaming or not self._stream_fits(blocks):
            return False
        self.kv.stream(seq)
        if not self.kv.allocate(seq, n):
            self.kv.pause(seq)
            return False
        self._stream_used.update(blocks)
        return True

    def _run_streamed(self, seq: Sequence, n: int) -> bool:
        """Schedule a streamed request: back on the device if the pool has free room, else from the host
        within this step's share. False if neither (it then waits, swapped out)."""
        need = self.kv.large_pages_needed(0, seq.num_computed + n)
        if seq not in self._demoted and self.kv.pool.num_free > need and self.kv.promote(seq, n):
            self._moved.add(seq)
            self.num_promotions += 1
            return True
        blocks = self.kv.stream_blocks(seq, n)
        if not self.streaming or not self._stream_fits(blocks) or not self.kv.allocate(seq, n):
            return False
        self._stream_used.update(blocks)
        return True

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """Tokens to compute for ``seq`` this step: within the step's budget, and few enough to fit alone.
        A decoding request's speculative tokens ride along as far as both allow; the rest are dropped."""
        n = self.kv.max_chunk(seq.num_computed, min(seq.num_uncomputed + len(seq.draft_token_ids), budget))
        del seq.draft_token_ids[max(0, n - seq.num_uncomputed):]
        return n

    def _admit(self, batch: ScheduledBatch, budget: int, failed: list[Sequence]) -> None:
        B = self.kv.block_size
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            if any(s.exclusive for s in self.running):
                break
            seq = self.waiting[0]
            keys = seq.block_keys(B, len(seq.token_ids) // B)
            if seq.swapped:  # resume: its pages come back from the host tier, nothing is matched
                hit, next_block = seq.num_computed, seq.num_computed // B
                n = self._chunk(seq, budget)
                fits = self.preemption.resume(seq, self.kv, n) or self._resume_streamed(seq, n)
            else:
                hit = self.kv.match_prefix(seq)
                next_block = hit // B
                if next_block < len(keys) and self._pending[keys[next_block]] and self.running:
                    self.kv.free(seq)  # wait for the running request to publish that block
                    break
                n = self._chunk(seq, budget)
                fits = self.kv.allocate(seq, n)
                while not fits and (j := self._victim(0)) is not None and self._demote(self.running[j], 0, count=True):
                    fits = self.kv.allocate(seq, n)  # Pie: the running set grows past the device
            if not fits:
                if self.running:
                    if not seq.swapped:
                        self.kv.free(seq)
                    break  # pages come back when running requests finish or are preempted
                self.kv.free(seq)  # alone and still short: a swapped-out copy is dropped, it recomputes
                n = self._admit_alone(seq, budget)
                if not n:
                    self.waiting.popleft()
                    failed.append(self._fail(seq))
                    continue
                hit, next_block = 0, 0
            self.waiting.popleft()
            if not seq.streamed:
                self._moved.add(seq)
            if not seq.admitted:
                seq.admitted = True
                seq.num_cached_tokens = hit
                self.prompt_tokens += seq.prompt_len
                self.cached_prompt_tokens += min(hit, seq.prompt_len)
                self.host_cached_prompt_tokens += min(seq.num_host_hit_tokens, seq.prompt_len)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            for key in keys[next_block:]:
                self._pending[key] += 1
            seq.pending_keys = keys[next_block:]
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n

    def _admit_alone(self, seq: Sequence, budget: int) -> int:
        """Nothing runs and ``seq`` still does not fit: pages of the prefix cache are in the way
        (a large page shared by a hit and evictable pages cannot go to another layer type). Empty
        the cache and start ``seq`` from nothing, alone until it finishes, which the constructor's
        minimum guarantees (``KVCacheManager.large_pages_for_one_request``). Returns the tokens
        scheduled, or 0 if even that fails."""
        self.kv.reset_prefix_cache()
        self.kv.match_prefix(seq)  # no hit now; sets up empty block tables
        n = self._chunk(seq, budget)
        if not self.kv.allocate(seq, n):
            self.kv.free(seq)
            return 0
        seq.exclusive = True
        return n

    def _fail(self, seq: Sequence) -> Sequence:
        kv = self.kv
        need = kv.large_pages_for_one_request(len(seq.token_ids))
        seq.finish_reason = "error"
        seq.error = (f"the request ({len(seq.token_ids)} tokens) needs {need} KV pages "
                     f"({need * kv.large_page_bytes} bytes of kv_cache_memory) to run alone, but the budget "
                     f"holds {kv.pool.num_pages} pages ({kv.pool.num_pages * kv.large_page_bytes} bytes)")
        return seq

    def describe(self) -> str:
        """The queues and the pool, for an error that must say why nothing moved."""
        head = self.waiting[0] if self.waiting else (self.running[0] if self.running else None)
        where = "" if head is None else (
            f"; first request {head.request_id}: {len(head.token_ids)} tokens, {head.num_computed} computed, "
            f"needs {self.kv.large_pages_for_one_request(len(head.token_ids))} pages alone")
        return (f"running {len(self.running)}, waiting {len(self.waiting)}, preemptions {self.num_preemptions}, "
                f"large pages free {self.kv.pool.num_free} of {self.kv.pool.num_pages}{where}")

    def _preempt(self, seq: Sequence, may_swap: bool = True) -> None:
        self._unpend(seq)
        seq.draft_token_ids = []
        if not may_swap:
            self.kv.free(seq)
        elif self.preemption.preempt(seq, self.kv):
            self.num_swapped_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _unpend(self, seq: Sequence) -> None:
        for key in seq.pending_keys:
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]
        seq.pending_keys = []

    # ---- after the step ----------------------------------------------------------------------
    def after_step(self, seq: Sequence) -> None:
        """Publish blocks the step completed; stop marking them pending once the prompt is in."""
        self.kv.commit(seq)
        if seq.pending_keys and seq.num_computed >= seq.prompt_len:
            self._unpend(seq)

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self._unpend(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
