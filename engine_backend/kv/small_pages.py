"""One layer type's small pages, carved out of large pages, with that type's prefix cache.

A small page is ``large_page * ratio + slot``. The allocator keeps, per large page it
holds, the free slots and how many slots are live (in use or cached); when none are
live the large page goes back to the pool, which is how memory moves between types.

Request-aware packing (Jenga): a request fills the large page it is already using
before it touches another, so when it ends its pages free whole large pages.

Cached pages whose reference count drops to zero stay put and become evictable, in
least-recently-freed order; requests free their blocks tail first, so for every type
the end of a cached prefix goes before its beginning and hit lengths stay aligned.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

from .pool import LargePagePool
from .spec import KVSpec


class SmallPageAllocator:
    def __init__(self, spec: KVSpec, ratio: int, pool: LargePagePool, clock: Callable[[], int]):
        self.spec = spec
        self.name = spec.name
        self.ratio = ratio  # small pages per large page
        self.pool = pool
        self._clock = clock
        self.reclaim_from_others: Callable[[str], bool] = lambda name: False  # set by the coordinator
        # called with (page, key) as a cached page is evicted, while its data is still there (host-tier spill)
        self.on_evict: Callable[[int, Hashable], None] = lambda page, key: None
        self.ref: dict[int, int] = {}  # live small page -> reference count (0 = cached, evictable)
        self._free_slots: dict[int, list[int]] = {}  # large page -> its free small pages
        self._with_free: dict[int, None] = {}  # large pages that have a free slot (ordered set)
        self._live: dict[int, int] = {}  # large page -> small pages in use or cached
        self._in_use: dict[int, int] = {}  # large page -> small pages with ref > 0
        self._filling: dict[str, int] = {}  # request id -> the large page it is filling
        # large pages holding only evictable pages (nothing in use), stalest first -> when they went idle
        self._idle: OrderedDict[int, int] = OrderedDict()
        self.cached: dict[Hashable, int] = {}  # block key -> page
        self.page_key: dict[int, Hashable] = {}
        self.evictable: OrderedDict[int, int] = OrderedDict()  # page -> time it became free

    # ---- accounting -------------------------------------------------------------
    @property
    def num_large_pages(self) -> int:
        return len(self._live)

    @property
    def num_active_large_pages(self) -> int:
        """Large pages holding at least one page a request is using."""
        return sum(1 for n in self._in_use.values() if n)

    @property
    def num_used_pages(self) -> int:
        return len(self.ref) - len(self.evictable)

    @property
    def num_cached_free_pages(self) -> int:
        return len(self.evictable)

    @property
    def num_free_slots(self) -> int:
        return sum(len(s) for s in self._free_slots.values())

    # ---- allocation ---------------------------------------------------------------
    def allocate(self, request_id: str) -> int | None:
        """A fresh small page for ``request_id``, or None if memory is exhausted."""
        large = self._filling.get(request_id)
        if large is not None and self._free_slots.get(large):
            return self._take_slot(large)
        while True:
            large = self.pool.take(self.name)
            if large is not None:
                self._adopt(large)
                self._filling[request_id] = large
                return self._take_slot(large)
            if self._with_free:  # a slot in a large page some other request started
                return self._take_slot(next(iter(self._with_free)))
            if self.evictable:
                self._evict_one()
                continue
            if not self.reclaim_from_others(self.name):
                return None

    def _adopt(self, large: int) -> None:
        base = large * self.ratio
        self._free_slots[large] = list(range(base + self.ratio - 1, base - 1, -1))
        self._with_free[large] = None
        self._live[large] = 0
        self._in_use[large] = 0

    def _take_slot(self, large: int) -> int:
        slots = self._free_slots[large]
        page = slots.pop()
        if not slots:
            self._with_free.pop(large, None)
        self._live[large] += 1
        self._in_use[large] += 1
        self._idle.pop(large, None)
        self.ref[page] = 1
        return page

    def _release_slot(self, page: int) -> None:
        large = page // self.ratio
        del self.ref[page]
        self._free_slots[large].append(page)
        self._with_free[large] = None
        self._live[large] -= 1
        if self._live[large] == 0:
            del self._free_slots[large], self._live[large], self._in_use[large]
            self._with_free.pop(large, None)
            self._idle.pop(large, None)
            self.pool.give_back(large)

    # ---- references -----------------------------------------------------------------
    def acquire(self, page: int) -> None:
        """Another reference to a cached page (a prefix hit)."""
        if self.ref[page] == 0:
            del self.evictable[page]
            self._in_use[page // self.ratio] += 1
            self._idle.pop(page // self.ratio, None)
        self.ref[page] += 1

    def release(self, page: int) -> None:
        self.ref[page] -= 1
        if self.ref[page] > 0:
            return
        large = page // self.ratio
        self._in_use[large] -= 1
        if page in self.page_key:
            self.evictable[page] = self._clock()
        else:
            self._release_slot(page)
        if self._in_use.get(large) == 0:  # still held, nothing in use: reclaimable as a whole
            self._idle[large] = self._clock()

    def forget_request(self, request_id: str) -> None:
        self._filling.pop(request_id, None)

    # ---- prefix cache -----------------------------------------------------------------
    def register(self, page: int, key: Hashable) -> None:
        """Publish a full, computed block so later requests can hit it."""
        if key not in self.cached and page not in self.page_key:
            self.cached[key] = page
            self.page_key[page] = key

    def lookup(self, key: Hashable) -> int | None:
        return self.cached.get(key)

    def _evict_one(self) -> None:
        page, _ = self.evictable.popitem(last=False)
        self._drop_cached(page)

    def _drop_cached(self, page: int) -> None:
        key = self.page_key.pop(page)
        del self.cached[key]
        self.on_evict(page, key)
        self._release_slot(page)

    def reclaimable_large_page(self) -> tuple[int, int] | None:
        """(time it went idle, large page) of the stalest large page holding only evictable pages."""
        for large, stamp in self._idle.items():
            return stamp, large
        return None

    def evict_large_page(self, large: int) -> None:
        base = large * self.ratio
        for page in range(base, base + self.ratio):
            if page in self.evictable:
                del self.evictable[page]
                self._drop_cached(page)

    def evict_all(self) -> None:
        while self.evictable:
            self._evict_one()
