"""The KV-cache coordinator: one small-page allocator per layer type over one large-page pool.

It owns every request's block tables (one per type), matches cached prefixes with the
rules of each type, allocates pages for newly scheduled tokens all-or-nothing, publishes
computed blocks to the prefix cache, and drops sliding-window blocks that fell out of
the window.
"""
from __future__ import annotations

import itertools

from .pool import LargePagePool
from .small_pages import SmallPageAllocator
from .spec import KVSpec, large_page_elems

NULL_PAGE = -1  # a block the request does not hold (outside a sliding window)


class KVCacheManager:
    def __init__(self, specs: list[KVSpec], num_large_pages: int, enable_prefix_caching: bool = True):
        if len({s.block_size for s in specs}) != 1:
            raise ValueError("all layer types must share one block size (tokens per page)")
        self.specs = specs
        self.block_size = specs[0].block_size
        self.large_page_elems = large_page_elems(specs)
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = LargePagePool(num_large_pages)
        ticks = itertools.count()
        self.allocators = {
            s.name: SmallPageAllocator(s, self.large_page_elems // s.page_elems, self.pool, lambda: next(ticks))
            for s in specs
        }
        for alloc in self.allocators.values():
            alloc.reclaim_from_others = self._reclaim_large_page
        self.peak_large_pages = 0

    # ---- capacity ------------------------------------------------------------------
    # One rule for the constructor's minimum budget and the scheduler's chunk sizes: what one
    # request alone holds while a step computes its tokens [start, start + n).
    def large_pages_needed(self, start: int, num_new: int) -> int:
        """Large pages one request alone holds while computing tokens ``[start, start + num_new)``.

        Full attention holds every block up to the chunk's end; a sliding type only the blocks
        from its window at ``start`` (it released the rest after the last step) to the chunk's end.
        """
        end_block = (start + num_new - 1) // self.block_size
        total = 0
        for s in self.specs:
            blocks = end_block - s.first_needed_block(start) + 1
            ratio = self.allocators[s.name].ratio
            if s.window is None or ratio == 1:
                total += -(-blocks // ratio)
            else:  # a run of blocks that slides along its large pages may straddle one more
                total += -(-(blocks - 1) // ratio) + 1
        return total

    def large_pages_for_one_request(self, num_tokens: int) -> int:
        """Large pages one request of ``num_tokens`` tokens needs at its peak, decoding one token a step.

        The constructor refuses a budget below this; ``max_chunk`` keeps every prefill chunk within
        the budget, so a request this size always runs alone. Full attention grows with the position
        and a sliding window repeats every block, so the peak lies within the last block of positions.
        """
        last = max(num_tokens, 1)
        return max(self.large_pages_needed(p, 1) for p in range(max(0, last - self.block_size), last))

    def max_chunk(self, start: int, limit: int) -> int:
        """The most tokens (at most ``limit``, at least one) a request at ``start`` computes in one step
        and still fits the whole pool alone."""
        if limit <= 1 or self.large_pages_needed(start, limit) <= self.pool.num_pages:
            return max(limit, 1)
        lo, hi = 1, limit  # fits(lo) is assumed (the constructor's promise), fits(hi) is false
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.large_pages_needed(start, mid) <= self.pool.num_pages:
                lo = mid
            else:
                hi = mid
        return lo

    @property
    def large_page_bytes(self) -> int:
        return self.large_page_elems * self.specs[0].dtype.itemsize

    # ---- prefix matching --------------------------------------------------------------
    def match_prefix(self, seq) -> int:
        """Attach the longest cached prefix usable by every layer type; return its token count.

        Full attention needs every block of the prefix; sliding window only the blocks
        the next query can see. At least one prompt token is always left to compute,
        since its logits are needed.
        """
        for s in self.specs:
            seq.block_tables[s.name] = []
        if not self.enable_prefix_caching:
            return 0
        B = self.block_size
        keys = seq.block_keys(B, (len(seq.token_ids) - 1) // B)
        hits = {name: [a.lookup(k) for k in keys] for name, a in self.allocators.items()}
        limit = len(keys)
        for s in self.specs:
            if s.window is None:
                limit = min(limit, next((i for i, p in enumerate(hits[s.name]) if p is None), limit))
        runs = {}  # sliding types: length of the cached run ending at each block
        for s in self.specs:
            if s.window is not None:
                run, r = [], 0
                for p in hits[s.name][:limit]:
                    r = r + 1 if p is not None else 0
                    run.append(r)
                runs[s.name] = run
        n = limit
        while n > 0 and not all(
            runs[s.name][n - 1] >= n - s.first_needed_block(n * B) for s in self.specs if s.window is not None
        ):
            n -= 1
        for s in self.specs:
            alloc, table = self.allocators[s.name], seq.block_tables[s.name]
            first = s.first_needed_block(n * B)
            for b in range(n):
                if b < first:
                    table.append(NULL_PAGE)
                else:
                    page = hits[s.name][b]
                    alloc.acquire(page)
                    table.append(page)
        seq.num_computed = n * B
        seq.num_registered_blocks = n
        return n * B

    # ---- allocation ------------------------------------------------------------------------
    def allocate(self, seq, num_new_tokens: int) -> bool:
        """Pages for the next ``num_new_tokens`` tokens of ``seq`` in every type, or none at all."""
        end_block = (seq.num_computed + num_new_tokens - 1) // self.block_size
        taken: list[tuple[SmallPageAllocator, list[int]]] = []
        for s in self.specs:
            alloc, table = self.allocators[s.name], seq.block_tables[s.name]
            new = []
            for _ in range(len(table), end_block + 1):
                page = alloc.allocate(seq.request_id)
                if page is None:
                    for a, pages in taken + [(alloc, new)]:
                        for p in pages:
                            a.release(p)
                    return False
                new.append(page)
            taken.append((alloc, new))
        for (alloc, new), s in zip(taken, self.specs):
            seq.block_tables[s.name].extend(new)
        self.peak_large_pages = max(self.peak_large_pages, self.pool.num_used)
        return True

    def _reclaim_large_page(self, needy: str) -> bool:
        """Evict a large page full of cached-but-unused pages from another type, stalest first."""
        candidates = []
        for name, alloc in self.allocators.items():
            if name != needy:
                found = alloc.reclaimable_large_page()
                if found is not None:
                    candidates.append((found[0], name, found[1]))
        if not candidates:
            return False
        _, name, large = min(candidates)
        self.allocators[name].evict_large_page(large)
        return True

    # ---- after a step ---------------------------------------------------------------------
    def commit(self, seq) -> None:
        """Publish newly completed blocks and release blocks that left a sliding window."""
        B = self.block_size
        full_blocks = seq.num_computed // B
        if self.enable_prefix_caching and full_blocks > seq.num_registered_blocks:
            keys = seq.block_keys(B, full_blocks)
            for s in self.specs:
                alloc, table = self.allocators[s.name], seq.block_tables[s.name]
                for b in range(seq.num_registered_blocks, full_blocks):
                    if table[b] != NULL_PAGE:
                        alloc.register(table[b], keys[b])
            seq.num_registered_blocks = full_blocks
        for s in self.specs:
            if s.window is not None:
                self._release_out_of_window(s, seq)

    def _release_out_of_window(self, spec: KVSpec, seq) -> None:
        alloc, table = self.allocators[spec.name], seq.block_tables[spec.name]
        first = min(spec.first_needed_block(seq.num_computed), len(table))
        for b in range(seq.released_upto.get(spec.name, 0), first):
            if table[b] != NULL_PAGE:
                alloc.release(table[b])
                table[b] = NULL_PAGE
        seq.released_upto[spec.name] = max(first, seq.released_upto.get(spec.name, 0))

    def free(self, seq) -> None:
        """Drop every page of ``seq`` (finished, aborted or preempted), tail blocks first."""
        for s in self.specs:
            alloc = self.allocators[s.name]
            for page in reversed(seq.block_tables.get(s.name, [])):
                if page != NULL_PAGE:
                    alloc.release(page)
            seq.block_tables[s.name] = []
            alloc.forget_request(seq.request_id)
        seq.released_upto.clear()
        seq.num_computed = 0
        seq.num_registered_blocks = 0

    def reset_prefix_cache(self) -> None:
        for alloc in self.allocators.values():
            alloc.evict_all()

    # ---- reporting ------------------------------------------------------------------------
    def usage(self) -> dict:
        per_type = {}
        for s in self.specs:
            a = self.allocators[s.name]
            per_type[s.name] = {
                "page_bytes": s.page_bytes,
                "large_pages": a.num_large_pages,
                "used_pages": a.num_used_pages,
                "cached_free_pages": a.num_cached_free_pages,
                "used_bytes": a.num_used_pages * s.page_bytes,
                "cached_bytes": a.num_cached_free_pages * s.page_bytes,
                "layers": len(s.layers),
                "window": s.window,
            }
        return {
            "large_pages_total": self.pool.num_pages,
            "large_pages_used": self.pool.num_used,
            "large_pages_active": sum(a.num_active_large_pages for a in self.allocators.values()),
            "large_pages_peak": self.peak_large_pages,
            "large_page_bytes": self.large_page_bytes,
            "types": per_type,
        }
