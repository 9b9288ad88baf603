"""The KV-cache coordinator: one manager per layer type over one large-page pool per tier.

It owns every request's block tables (one per type), matches cached prefixes with the rules of
each type, allocates pages for newly scheduled tokens all-or-nothing, publishes computed blocks to
the prefix cache, and has each type release the blocks it no longer needs.

With a host tier (Pie), it also moves pages between tiers. It never copies anything itself: it
records the copies a step needs (``take_copies``) and the runner performs them, layer by layer,
before each layer reads or writes its pages (``copier.py``). Within a step every device-to-host
copy of a layer runs before every host-to-device copy of that layer, which makes the bookkeeping
below safe to do eagerly:

- a device page whose data is copied out may be handed to another request at once: its new owner
  writes it in that layer only after the copy-out;
- a host page that is a copy's source is held until the step's copies finished (``after_copies``);
- a page is published to the device prefix cache only once its copy-in is recorded and can no
  longer be rolled back.

Pie's memory expansion: a running request may also be *streamed*: its block tables then name host
pages, and each step the runner gathers them into device staging buffers one layer at a time. How
many blocks per type may stream in a step is ``stream_limit``: a share of the staging capacity that
``adapt_stream_share`` grows while the gathers hide behind compute and shrinks when layers wait.
"""
from __future__ import annotations

import itertools

from ..sequence import block_keys
from .pool import LargePagePool
from .single_type import NULL_PAGE, SingleTypeManager, manager_for
from .spec import KVSpec, large_page_elems

HOST_CACHE_OWNER = "host-prefix-cache"  # the packing key of host pages that hold spilled cached blocks
STREAM_SHARE_START = 0.5  # of the staging capacity, before any step has measured the gathers
STREAM_HIDDEN_GROW, STREAM_HIDDEN_SHRINK = 0.9, 0.6  # hidden fraction above which to grow, below which to shrink


class KVCacheManager:
    def __init__(self, specs: list[KVSpec], num_large_pages: int, enable_prefix_caching: bool = True,
                 num_host_pages: int = 0):
        if len({s.block_size for s in specs}) != 1:
            raise ValueError("all layer types must share one block size (tokens per page)")
        self.specs = specs
        self.block_size = specs[0].block_size
        self.large_page_elems = large_page_elems(specs)
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = LargePagePool(num_large_pages)
        self.host_pool = LargePagePool(num_host_pages) if num_host_pages > 0 else None
        ticks = itertools.count()
        self.managers: dict[str, SingleTypeManager] = {
            s.name: manager_for(s, self.large_page_elems // s.page_elems, self.pool, lambda: next(ticks),
                                self.host_pool)
            for s in specs
        }
        self.allocators = {name: m.device for name, m in self.managers.items()}
        for name, m in self.managers.items():
            m.device.reclaim_from_others = lambda needy: self._reclaim_large_page(needy, "device")
            if m.host is not None:
                m.host.reclaim_from_others = lambda needy: self._reclaim_large_page(needy, "host")
                m.device.on_evict = lambda page, key, name=name: self._spill(name, page, key)
        self.peak_large_pages = 0
        self._spilling = True
        self._copies_out: list[tuple[str, int, int]] = []  # (type, device page, host page), this step
        self._copies_in: list[tuple[str, int, int]] = []  # (type, host page, device page), this step
        self._release_after_copies: list[tuple[str, int]] = []  # host pages read by this step's copies
        self.swapped_out_blocks = 0
        self.swapped_in_blocks = 0
        self.stream_slots: dict[str, int] = {}  # staging capacity per type (set with the staging buffers)
        self.stream_share = STREAM_SHARE_START

    @property
    def has_host_tier(self) -> bool:
        return self.host_pool is not None

    # ---- capacity ------------------------------------------------------------------
    # One rule for the constructor's minimum budget and the scheduler's chunk sizes: what one
    # request alone holds while a step computes its tokens [start, start + n).
    def large_pages_needed(self, start: int, num_new: int) -> int:
        """Large pages one request alone holds while computing tokens ``[start, start + num_new)``."""
        return sum(m.large_pages_needed(start, num_new) for m in self.managers.values())

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

        Blocks may be cached on the device or, with a host tier, on the host; a host hit is copied
        back into a fresh device page this step. At least one prompt token is always left to
        compute, since its logits are needed.
        """
        for s in self.specs:
            seq.block_tables[s.name] = []
        seq.num_host_hit_tokens = 0
        if not self.enable_prefix_caching:
            return 0
        keys = seq.block_keys(self.block_size, (len(seq.token_ids) - 1) // self.block_size)
        on_device = {n: [m.device.lookup(k) for k in keys] for n, m in self.managers.items()}
        if self.has_host_tier:
            on_host = {n: [m.host.lookup(k) for k in keys] for n, m in self.managers.items()}
            n = self._aligned_hit({t: [d is not None or h is not None for d, h in zip(on_device[t], on_host[t])]
                                   for t in on_device}, len(keys))
            if n and self._attach(seq, keys, n, on_device, on_host):
                return n * self.block_size
            # no room to bring the host hits in; the failed try may have evicted device pages, so look again
            on_device = {n: [m.device.lookup(k) for k in keys] for n, m in self.managers.items()}
        n = self._aligned_hit({t: [p is not None for p in pages] for t, pages in on_device.items()}, len(keys))
        self._attach(seq, keys, n, on_device, None)
        return n * self.block_size

    def cached_blocks(self, token_ids: list[int]) -> int:
        """Leading full blocks of a prompt that ``match_prefix`` would find cached now (device or host tier, usable
        by every layer type, at least one token left to compute), without attaching or touching anything."""
        if not self.enable_prefix_caching:
            return 0
        keys = block_keys(token_ids, self.block_size, max(0, len(token_ids) - 1) // self.block_size)
        present = {n: [m.device.lookup(k) is not None or (m.host is not None and m.host.lookup(k) is not None)
                       for k in keys] for n, m in self.managers.items()}
        return self._aligned_hit(present, len(keys)) if keys else 0

    def _aligned_hit(self, present: dict[str, list[bool]], limit: int) -> int:
        """The longest prefix every type can use: each type's longest hit within the others', to a fixpoint."""
        n = limit
        while True:
            m = min(self.managers[t].longest_hit(present[t], n) for t in present)
            if m == n:
                return n
            n = m

    def _attach(self, seq, keys, n: int, on_device, on_host) -> bool:
        """Hold the prefix's pages for ``seq``, all or nothing: device hits and the host pages of host hits
        first (allocating may evict and spill, and must take neither), then a fresh device page per host hit."""
        B = self.block_size
        plan = []  # (manager, block, device page or None, host page or None)
        for name, m in self.managers.items():
            for b in range(m.spec.first_needed_block(n * B), n):
                d = on_device[name][b]
                plan.append((m, b, d, None if d is not None or on_host is None else on_host[name][b]))
        for s in self.specs:
            seq.block_tables[s.name] = [NULL_PAGE] * n
        for m, b, d, h in plan:
            if d is not None:
                m.device.acquire(d)
                seq.block_tables[m.name][b] = d
            else:
                m.host.acquire(h)
        copies = []
        for m, b, d, h in plan:
            if d is None:
                page = m.device.allocate(seq.request_id)
                if page is None:  # roll back: nothing was published or copied
                    for mm, bb, dd, hh in plan:
                        if dd is None:
                            mm.host.release(hh)
                    self._drop_device_pages(seq)
                    return False
                seq.block_tables[m.name][b] = page
                copies.append((m, b, h, page))
        for m, b, h, page in copies:
            self._release_after_copies.append((m.name, h))
            self._copies_in.append((m.name, h, page))
            m.device.register(page, keys[b])
        self.swapped_in_blocks += len(copies)
        seq.num_host_hit_tokens = len({b for _, b, _, _ in copies}) * B
        seq.num_computed = n * B
        seq.num_registered_blocks = n
        self.peak_large_pages = max(self.peak_large_pages, self.pool.num_used)
        return True

    def _drop_device_pages(self, seq) -> None:
        """Release every page ``seq``'s block tables hold (tail blocks first) and forget its packing."""
        for m in self.managers.values():
            alloc = self.tier_of(m, seq)
            for page in reversed(seq.block_tables.get(m.name, [])):
                if page != NULL_PAGE:
                    alloc.release(page)
            seq.block_tables[m.name] = []
            alloc.forget_request(seq.request_id)
        seq.streamed = False

    @staticmethod
    def tier_of(m: SingleTypeManager, seq):
        """The allocator that ``seq``'s block tables name pages of: the host's while it streams."""
        return m.host if seq.streamed else m.device

    # ---- allocation ------------------------------------------------------------------------
    def allocate(self, seq, num_new_tokens: int) -> bool:
        """Pages for the next ``num_new_tokens`` tokens of ``seq`` in every type, or none at all."""
        end_block = (seq.num_computed + num_new_tokens - 1) // self.block_size
        taken: list[tuple[SingleTypeManager, list[int]]] = []
        for m in self.managers.values():
            table, alloc = seq.block_tables[m.name], self.tier_of(m, seq)
            new = []
            for _ in range(len(table), end_block + 1):
                page = alloc.allocate(seq.request_id)
                if page is None:
                    for mm, pages in taken + [(m, new)]:
                        for p in pages:
                            self.tier_of(mm, seq).release(p)
                    return False
                new.append(page)
            taken.append((m, new))
        for m, new in taken:
            seq.block_tables[m.name].extend(new)
        self.peak_large_pages = max(self.peak_large_pages, self.pool.num_used)
        return True

    def _reclaim_large_page(self, needy: str, tier: str) -> bool:
        """Evict a large page full of cached-but-unused pages from another type of the tier, stalest first."""
        candidates = []
        for name, m in self.managers.items():
            alloc = getattr(m, tier)
            if name != needy:
                found = alloc.reclaimable_large_page()
                if found is not None:
                    candidates.append((found[0], name, found[1]))
        if not candidates:
            return False
        _, name, large = min(candidates)
        getattr(self.managers[name], tier).evict_large_page(large)
        return True

    # ---- host tier ----------------------------------------------------------------------------
    def _spill(self, name: str, page: int, key) -> None:
        """A cached device page is being evicted: keep its block in the host tier's prefix cache (LRU)."""
        host = self.managers[name].host
        if not self._spilling or host.lookup(key) is not None:
            return
        h = host.allocate(HOST_CACHE_OWNER)
        if h is None:  # every host page is held by swapped-out requests: the block is dropped
            return
        self._copies_out.append((name, page, h))
        self.swapped_out_blocks += 1
        host.register(h, key)
        host.release(h)  # cached and evictable on the host from now on

    def swap_out(self, seq) -> bool:
        """Move ``seq``'s live blocks to the host tier, keeping its progress; False, changing nothing,
        when there is no host tier or no room in it.

        A block the host tier already caches is shared, not copied; a copied block with a key joins the
        host prefix cache, so it outlives the request and a later eviction from the device copies nothing."""
        if not self.has_host_tier:
            return False
        keys = seq.block_keys(self.block_size, seq.num_registered_blocks) if self.enable_prefix_caching else []
        host_tables: dict[str, list[int]] = {name: [] for name in self.managers}
        copies = []
        for m in self.managers.values():
            for b, page in enumerate(seq.block_tables.get(m.name, [])):
                h = NULL_PAGE
                if page != NULL_PAGE:
                    h, fresh = self._hold_block(m.host, keys, b, seq.request_id)
                    if h is None:
                        self._release_host_tables(seq, host_tables)
                        return False
                    if fresh:
                        copies.append((m, page, h, keys[b] if b < len(keys) else None))
                host_tables[m.name].append(h)
        for m, page, h, key in copies:
            self._copies_out.append((m.name, page, h))
            if key is not None:
                m.host.register(h, key)
        self.swapped_out_blocks += len(copies)
        self._drop_device_pages(seq)
        seq.host_tables = host_tables
        return True

    def swap_in(self, seq, num_new_tokens: int) -> bool:
        """Bring a swapped-out ``seq`` back and allocate its next ``num_new_tokens``, all or nothing.

        A block still cached on the device (its key is known) is shared instead of copied."""
        keys = seq.block_keys(self.block_size, seq.num_registered_blocks) if self.enable_prefix_caching else []
        fresh = self._restore_tables(seq, keys)
        if fresh is None or not self.allocate(seq, num_new_tokens):
            self._drop_device_pages(seq)  # roll back: nothing was published or copied
            return False
        for m, b, h, page in fresh:
            self._copies_in.append((m.name, h, page))
            if b < len(keys):
                m.device.register(page, keys[b])
        self.swapped_in_blocks += len(fresh)
        for m in self.managers.values():  # the host copies are read this step: released after it
            self._release_after_copies += [(m.name, h) for h in seq.host_tables[m.name] if h != NULL_PAGE]
            m.host.forget_request(seq.request_id)
        seq.host_tables = None
        self.peak_large_pages = max(self.peak_large_pages, self.pool.num_used)
        return True

    def _restore_tables(self, seq, keys) -> list[tuple[SingleTypeManager, int, int, int]] | None:
        """Device pages for every block of a swapped-out request: a cached one where the device still has
        the block, else a fresh one to copy into. Returns the fresh ones (manager, block, host page, device
        page), or None when the device ran out (the tables hold what was taken, for the caller to release)."""
        fresh = []
        for m in self.managers.values():
            table = seq.block_tables[m.name] = []
            for b, h in enumerate(seq.host_tables[m.name]):
                page = NULL_PAGE
                if h != NULL_PAGE:
                    page, is_fresh = self._hold_block(m.device, keys, b, seq.request_id)
                    if page is None:
                        return None
                    if is_fresh:
                        fresh.append((m, b, h, page))
                table.append(page)
        return fresh

    @staticmethod
    def _hold_block(alloc, keys, b: int, request_id: str) -> tuple[int | None, bool]:
        """A page of ``alloc``'s tier for block ``b``: the tier's cached copy if it has the block's key (shared,
        nothing to copy), else a fresh page to copy into. Returns (page, fresh); page None if the tier is full."""
        page = alloc.lookup(keys[b]) if b < len(keys) else None
        if page is not None:
            alloc.acquire(page)
            return page, False
        return alloc.allocate(request_id), True

    def _release_host_tables(self, seq, host_tables) -> None:
        for name, pages in host_tables.items():
            host = self.managers[name].host
            for h in reversed(pages):
                if h != NULL_PAGE:
                    host.release(h)
            host.forget_request(seq.request_id)

    # ---- streaming (Pie's expansion) --------------------------------------------------------------
    def demote(self, seq) -> bool:
        """A running request gives its device pages up but keeps running, streamed from the host tier."""
        if not self.swap_out(seq):
            return False
        self.stream(seq)
        return True

    @staticmethod
    def stream(seq) -> None:
        """Swapped out -> running from the host tier: its host pages become its block tables; no copies."""
        seq.block_tables, seq.host_tables, seq.streamed = seq.host_tables, None, True

    def pause(self, seq) -> None:
        """Streamed -> swapped out, waiting on the host tier; no copies."""
        seq.host_tables, seq.block_tables, seq.streamed = seq.block_tables, {n: [] for n in self.managers}, False

    def promote(self, seq, num_new_tokens: int) -> bool:
        """A streamed request moves back to the device (copied in this step) if the device has room."""
        self.pause(seq)
        if self.swap_in(seq, num_new_tokens):
            return True
        self.stream(seq)
        return False

    def stream_limit(self, name: str) -> int:
        """Blocks of type ``name`` that may stream in one step now."""
        return int(self.stream_share * self.stream_slots.get(name, 0))

    def stream_blocks(self, seq, num_new_tokens: int) -> dict[str, int]:
        """Blocks per type ``seq`` holds once ``num_new_tokens`` more are allocated (what streaming it costs)."""
        end_block = (seq.num_computed + num_new_tokens - 1) // self.block_size
        tables = seq.block_tables if not seq.swapped else seq.host_tables
        held = {name: tables.get(name, []) for name in self.managers}
        return {name: sum(p != NULL_PAGE for p in t) + max(0, end_block + 1 - len(t)) for name, t in held.items()}

    def adapt_stream_share(self, hidden_fraction: float | None) -> None:
        """Pie's adaptive expansion: stream more while the gathers finished before their layers needed them,
        less when layers waited."""
        if hidden_fraction is None:
            return
        if hidden_fraction >= STREAM_HIDDEN_GROW:
            self.stream_share = min(1.0, self.stream_share * 1.25 + 0.02)
        elif hidden_fraction < STREAM_HIDDEN_SHRINK:
            self.stream_share = max(0.0, self.stream_share * 0.75 - 0.02)

    def _drop_host_copy(self, seq) -> None:
        self._release_host_tables(seq, seq.host_tables)
        seq.host_tables = None

    def take_copies(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        """The copies recorded since the last call: (device -> host, host -> device), in order."""
        out, self._copies_out = self._copies_out, []
        into, self._copies_in = self._copies_in, []
        return out, into

    def after_copies(self) -> None:
        """The step's copies are done: release the host pages they read."""
        for name, h in self._release_after_copies:
            self.managers[name].host.release(h)
        self._release_after_copies = []

    # ---- after a step ---------------------------------------------------------------------
    def commit(self, seq) -> None:
        """Publish newly completed blocks and let each type release what it will not read again."""
        B = self.block_size
        full_blocks = seq.num_computed // B
        if self.enable_prefix_caching and full_blocks > seq.num_registered_blocks:
            keys = seq.block_keys(B, full_blocks)
            for m in self.managers.values():
                table, alloc = seq.block_tables[m.name], self.tier_of(m, seq)
                for b in range(seq.num_registered_blocks, full_blocks):
                    if table[b] != NULL_PAGE:
                        alloc.register(table[b], keys[b])
            seq.num_registered_blocks = full_blocks
        for m in self.managers.values():
            m.release_skipped(seq, self.tier_of(m, seq))

    def truncate(self, seq, num_tokens: int) -> None:
        """Roll ``seq`` back to its first ``num_tokens`` computed tokens (speculative tokens that verification
        rejected): pages of blocks wholly past them are released and forgotten, nothing past them is published.

        Registered blocks are never rolled back: they hold verified tokens only (``commit`` publishes blocks
        below ``num_computed``, and verification lowers ``num_computed`` before ``commit`` runs)."""
        keep = -(-num_tokens // self.block_size)
        if num_tokens < seq.num_registered_blocks * self.block_size:
            raise ValueError(f"cannot roll {seq.request_id} back to {num_tokens} tokens: "
                             f"{seq.num_registered_blocks} blocks are already published")
        for m in self.managers.values():
            table, alloc = seq.block_tables.get(m.name, []), self.tier_of(m, seq)
            for page in reversed(table[keep:]):
                if page != NULL_PAGE:
                    alloc.release(page)
            del table[keep:]
        seq.num_computed = min(seq.num_computed, num_tokens)

    def free(self, seq) -> None:
        """Drop every page of ``seq`` in both tiers (finished, aborted or preempted), tail blocks first."""
        if seq.host_tables is not None:
            self._drop_host_copy(seq)
        self._drop_device_pages(seq)
        seq.released_upto.clear()
        seq.num_computed = 0
        seq.num_registered_blocks = 0

    def evict_device_cache(self) -> None:
        """Empty the device prefix cache, keeping its blocks in the host tier where there is one."""
        for m in self.managers.values():
            m.device.evict_all()

    def reset_prefix_cache(self) -> None:
        """Forget every cached block in both tiers."""
        self._spilling = False
        try:
            for m in self.managers.values():
                m.device.evict_all()
                if m.host is not None:
                    m.host.evict_all()
        finally:
            self._spilling = True

    # ---- reporting ------------------------------------------------------------------------
    @property
    def num_active_large_pages(self) -> int:
        """Device large pages holding at least one page a request uses (not only cache)."""
        return sum(m.device.num_active_large_pages for m in self.managers.values())

    def usage(self) -> dict:
        per_type = {}
        for s in self.specs:
            a, h = self.managers[s.name].device, self.managers[s.name].host
            per_type[s.name] = {
                "page_bytes": s.page_bytes,
                "large_pages": a.num_large_pages,
                "used_pages": a.num_used_pages,
                "cached_free_pages": a.num_cached_free_pages,
                "used_bytes": a.num_used_pages * s.page_bytes,
                "cached_bytes": a.num_cached_free_pages * s.page_bytes,
                "host_used_bytes": h.num_used_pages * s.page_bytes if h else 0,
                "host_cached_bytes": h.num_cached_free_pages * s.page_bytes if h else 0,
                "layers": len(s.layers),
                "window": s.window,
            }
        return {
            "large_pages_total": self.pool.num_pages,
            "large_pages_used": self.pool.num_used,
            "large_pages_active": self.num_active_large_pages,
            "large_pages_peak": self.peak_large_pages,
            "large_page_bytes": self.large_page_bytes,
            "host_large_pages_total": self.host_pool.num_pages if self.host_pool else 0,
            "host_large_pages_used": self.host_pool.num_used if self.host_pool else 0,
            "types": per_type,
        }
