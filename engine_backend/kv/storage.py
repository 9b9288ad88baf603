"""The physical KV cache: one flat buffer of large pages, viewed per layer type.

Every type views the same memory as its own array of small pages shaped
``[pages, layers_in_type, 2 (K/V), block_size, kv_heads, head_dim]``; small page ``p`` of a
type lies inside large page ``p // ratio``, so the allocators' bookkeeping is the layout.
The host tier is the same layout in host memory (pinned when the device is a GPU, so copies
can run asynchronously on their own stream).
"""
from __future__ import annotations

import torch

from .spec import KVSpec


class PagedKVStorage:
    def __init__(self, specs: list[KVSpec], num_large_pages: int, large_page_elems: int, device,
                 host_tier: bool = False):
        """``device``: where the model runs; with ``host_tier`` the buffer is in host memory for that device."""
        dtype = specs[0].dtype
        n = num_large_pages * large_page_elems
        if host_tier:  # never read unwritten: copies fill every page before a layer reads it
            pin = torch.device(device).type == "cuda"
            self.buffer = torch.empty(n, dtype=dtype, device="cpu", pin_memory=pin)
        else:  # zeroed, not empty: padded reads of unwritten slots must stay finite under masking
            self.buffer = torch.zeros(n, dtype=dtype, device=device)
        self.type_pages: dict[str, torch.Tensor] = {}  # type -> [pages, layers, 2, B, heads, dim]
        self.layer_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # K, V: [pages, B, heads, dim]
        for spec in specs:
            pages = self.buffer.view(-1, len(spec.layers), 2, spec.block_size, spec.num_kv_heads, spec.head_dim)
            self.type_pages[spec.name] = pages
            for i, layer in enumerate(spec.layers):
                self.layer_kv[layer] = (pages[:, i, 0], pages[:, i, 1])

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()
