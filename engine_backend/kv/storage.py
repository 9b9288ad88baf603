"""The physical KV cache: one flat buffer of large pages, viewed per layer type.

Every type views the same memory as its own array of small pages shaped
``[pages, layers_in_type, 2 (K/V), block_size, kv_heads, head_dim]``; small page ``p`` of a
type lies inside large page ``p // ratio``, so the allocators' bookkeeping is the layout.
The host tier is the same layout in host memory (pinned when the device is a GPU, so copies
can run asynchronously on their own stream).
"""
from __future__ import annotations

import torch

from .spec import KVSpec, large_page_elems


class PagedKVStorage:
    def __init__(self, specs: list[KVSpec], num_large_pages: int, large_page_elems: int, device,
                 host_tier: bool = False):
        """``device``: where the model runs; with ``host_tier`` the buffer is in host memory for that device."""
        dtype = specs[0].dtype
        n = num_large_pages * large_page_elems
        # Zeroed, not empty, in both tiers: pages move whole, and the slots a request has not written yet are
        # read under a mask, where 0 * NaN from uninitialised memory would still poison the output.
        pin = host_tier and torch.device(device).type == "cuda"
        self.buffer = torch.zeros(n, dtype=dtype, device="cpu" if host_tier else device, pin_memory=pin)
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


class StagingBuffers:
    """Device buffers that streamed requests' pages pass through one layer at a time (Pie's expansion).

    Per type, ``depth`` buffers of ``slots[type]`` pages of one layer each, ``[slots, 2 (K/V), B, heads,
    dim]``; the ``i``-th layer of a type uses buffer ``i % depth``, so ``depth`` layers can be in flight while
    the device holds only ``depth / layers_in_type`` of the streamed pages. Looked up by model layer, as
    ``PagedKVStorage.layer_kv`` is.
    """

    def __init__(self, specs: list[KVSpec], slots: dict[str, int], depth: int, device):
        self.depth = depth
        self.buffers = {  # zeroed: padded reads of unused slots must stay finite under masking
            s.name: torch.zeros(depth, max(slots.get(s.name, 0), 1), 2, s.block_size, s.num_kv_heads, s.head_dim,
                                dtype=s.dtype, device=device)
            for s in specs
        }
        self.layer_buffer = {layer: self.buffers[s.name][i % depth] for s in specs for i, layer in enumerate(s.layers)}
        self.layer_kv = {layer: (buf[:, 0], buf[:, 1]) for layer, buf in self.layer_buffer.items()}

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


STAGING_DEPTH = 2  # layers of a type in flight: one computed while the next is gathered
DEFAULT_EXPANSION = 2.0  # streamed KV up to this many times the device pool's, when staging is cheap
MAX_STAGING_SHARE = 0.25  # ...which is when it costs at most this share of the device budget


def split_budget(specs: list[KVSpec], budget: int, expansion: float | None, num_host_pages: int,
                 min_pool_pages: int) -> tuple[int, dict[str, int]]:
    """Divide the device KV budget between the page pool and the staging buffers of streamed requests.

    Streaming ``expansion`` times the pool's pages costs ``STAGING_DEPTH / layers_in_type`` of them in
    staging, so a pool of P large pages needs ``P * large_page_bytes * (1 + f)`` bytes with
    ``f = STAGING_DEPTH * expansion * sum(1 / layers_in_type)``. ``expansion=None`` streams
    ``DEFAULT_EXPANSION`` when that staging is at most ``MAX_STAGING_SHARE`` of the budget (many layers
    per type), else nothing; streaming never leaves the pool short of ``min_pool_pages``.
    Returns (pool large pages, staging slots per type).
    """
    lcm_bytes = large_page_elems(specs) * specs[0].dtype.itemsize
    per_unit = STAGING_DEPTH * sum(1 / len(s.layers) for s in specs)
    if expansion is None:
        cheap = per_unit * DEFAULT_EXPANSION <= MAX_STAGING_SHARE / (1 - MAX_STAGING_SHARE)
        expansion = DEFAULT_EXPANSION if cheap else 0.0
    if expansion < 0:
        raise ValueError(f"stream_expansion must be >= 0, not {expansion}")
    pool = int(budget // (lcm_bytes * (1 + per_unit * expansion))) if num_host_pages else budget // lcm_bytes
    if not num_host_pages or not expansion or pool < min_pool_pages:
        return budget // lcm_bytes, {}
    slots = {}
    for s in specs:
        ratio = lcm_bytes // s.page_bytes
        slots[s.name] = min(int(expansion * pool * ratio), num_host_pages * ratio)
    return pool, slots
