"""The one pool of large pages that every layer type carves its small pages from."""
from __future__ import annotations


class LargePagePool:
    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: low ids first, for locality
        self.owner: list[str | None] = [None] * num_pages  # layer-type name holding each page

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def take(self, owner: str) -> int | None:
        if not self._free:
            return None
        page = self._free.pop()
        self.owner[page] = owner
        return page

    def give_back(self, page: int) -> None:
        assert self.owner[page] is not None, f"large page {page} returned twice"
        self.owner[page] = None
        self._free.append(page)
