"""One manager per layer type: that type's allocators (device, and host when there is a host tier)
and its rules for what a request holds, what a cached prefix needs, and what it may release.

The coordinator (``manager.py``) asks every manager the same questions and combines the answers,
so a new layer type is a new spec and a new manager here, not a branch in the coordinator.
"""
from __future__ import annotations

from .pool import LargePagePool
from .small_pages import SmallPageAllocator
from .spec import FullAttentionSpec, KVSpec, SlidingWindowSpec

NULL_PAGE = -1  # a block the request does not hold (outside a sliding window)


class SingleTypeManager:
    def __init__(self, spec: KVSpec, ratio: int, pool: LargePagePool, clock, host_pool: LargePagePool | None):
        self.spec = spec
        self.name = spec.name
        self.ratio = ratio
        self.device = SmallPageAllocator(spec, ratio, pool, clock)
        self.host = SmallPageAllocator(spec, ratio, host_pool, clock) if host_pool is not None else None

    def large_pages_needed(self, start: int, num_new: int) -> int:
        """Large pages this type holds for one request while it computes tokens ``[start, start + num_new)``."""
        raise NotImplementedError

    def longest_hit(self, present: list[bool], limit: int) -> int:
        """The longest prefix of at most ``limit`` blocks this type can use, given which blocks are cached."""
        raise NotImplementedError

    def release_skipped(self, seq, alloc: SmallPageAllocator) -> None:
        """Release the blocks the request will never read again (none for full attention); ``alloc`` is
        the tier its block tables name pages of."""


class FullAttentionManager(SingleTypeManager):
    def large_pages_needed(self, start, num_new):
        blocks = (start + num_new - 1) // self.spec.block_size + 1
        return -(-blocks // self.ratio)

    def longest_hit(self, present, limit):
        return next((i for i, p in enumerate(present[:limit]) if not p), limit)


class SlidingWindowManager(SingleTypeManager):
    def large_pages_needed(self, start, num_new):
        blocks = (start + num_new - 1) // self.spec.block_size - self.spec.first_needed_block(start) + 1
        if self.ratio == 1:
            return blocks
        return -(-(blocks - 1) // self.ratio) + 1  # a run of blocks sliding along its large pages straddles one more

    def longest_hit(self, present, limit):
        """Only the blocks the next query sees must be cached; the longest such prefix need not be a
        prefix of the present ones, so scan down from ``limit`` with run lengths."""
        run, runs = 0, []
        for p in present[:limit]:
            run = run + 1 if p else 0
            runs.append(run)
        n = limit
        while n > 0 and runs[n - 1] < n - self.spec.first_needed_block(n * self.spec.block_size):
            n -= 1
        return n

    def release_skipped(self, seq, alloc):
        table = seq.block_tables[self.name]
        first = min(self.spec.first_needed_block(seq.num_computed), len(table))
        for b in range(seq.released_upto.get(self.name, 0), first):
            if table[b] != NULL_PAGE:
                alloc.release(table[b])
                table[b] = NULL_PAGE
        seq.released_upto[self.name] = max(first, seq.released_upto.get(self.name, 0))


MANAGER_FOR_SPEC = {FullAttentionSpec: FullAttentionManager, SlidingWindowSpec: SlidingWindowManager}


def manager_for(spec: KVSpec, ratio: int, pool, clock, host_pool) -> SingleTypeManager:
    return MANAGER_FOR_SPEC[type(spec)](spec, ratio, pool, clock, host_pool)
