"""Paged attention in plain torch (CPU and CUDA): write the step's K/V into pages, gather, attend.

Per step and per layer type, ``build_step_metadata`` turns block tables into index and
mask tensors once; every layer of that type reuses them. Decoding requests (one query
token each) share one padded SDPA call; each prefill chunk gets its own call, so no
chunk is padded to the longest one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv import KVSpec, PagedKVStorage


@dataclass
class TypeStepMeta:
    slot_page: torch.Tensor  # [N] page of each new token
    slot_off: torch.Tensor  # [N] offset inside that page
    decode_pages: torch.Tensor | None  # [S_d, max_blocks] pages each decoding request reads
    decode_mask: torch.Tensor | None  # [S_d, 1, 1, max_blocks * block_size]
    # (token start, end, pages or None when the chunk starts the sequence, mask [1,1,n,T])
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor]]


def build_step_metadata(spec: KVSpec, tables: list[list[int]], starts: list[int], counts: list[int],
                        num_decode: int, device) -> TypeStepMeta:
    """``tables``/``starts``/``counts``: per request in token order, decoders first."""
    B = spec.block_size
    window = spec.window
    slot_page, slot_off = [], []
    for table, start, n in zip(tables, starts, counts):
        for pos in range(start, start + n):
            slot_page.append(table[pos // B])
            slot_off.append(pos % B)

    decode_pages = decode_mask = None
    if num_decode:
        firsts = [spec.first_needed_block(s) for s in starts[:num_decode]]
        rows = [table[lo:s // B + 1] for table, lo, s in zip(tables, firsts, starts)]
        width = max(len(r) for r in rows)
        decode_pages = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        q_pos = torch.tensor(starts[:num_decode]).unsqueeze(1)
        kv_pos = torch.tensor(firsts).unsqueeze(1) * B + torch.arange(width * B).unsqueeze(0)
        mask = kv_pos <= q_pos
        if window is not None:
            mask &= kv_pos > q_pos - window
        decode_pages = decode_pages.to(device, non_blocking=True)
        decode_mask = mask[:, None, None, :].to(device, non_blocking=True)

    prefills = []
    offset = num_decode
    for table, start, n in zip(tables[num_decode:], starts[num_decode:], counts[num_decode:]):
        q_pos = torch.arange(start, start + n).unsqueeze(1)
        if start == 0:  # nothing cached before the chunk: attend to its own fresh K/V, no gather
            pages, kv_pos = None, q_pos.T
        else:
            lo, hi = spec.first_needed_block(start), (start + n - 1) // B
            pages = torch.tensor(table[lo:hi + 1], dtype=torch.long).to(device, non_blocking=True)
            kv_pos = lo * B + torch.arange((hi - lo + 1) * B).unsqueeze(0)
        mask = kv_pos <= q_pos
        if window is not None:
            mask &= kv_pos > q_pos - window
        prefills.append((offset, offset + n, pages, mask[None, None].to(device, non_blocking=True)))
        offset += n
    return TypeStepMeta(
        torch.tensor(slot_page, dtype=torch.long).to(device, non_blocking=True),
        torch.tensor(slot_off, dtype=torch.long).to(device, non_blocking=True),
        decode_pages, decode_mask, prefills,
    )


def _attend(q, k, v, mask, scale, softcap):
    """q [S,Hq,L,D], k/v [S,Hkv,T,D], mask [S,1,L,T] bool."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    # Gemma 2 caps the logits before the softmax, which SDPA cannot express.
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


class PagedAttention:
    """The attention callable handed to the model: ``attn(layer, q, k, v, scale, softcap)``."""

    def __init__(self, storage: PagedKVStorage, layer_spec: dict[int, KVSpec]):
        self.storage = storage
        self.layer_spec = layer_spec
        self.meta: dict[str, TypeStepMeta] = {}
        self.num_decode = 0

    def begin_step(self, meta: dict[str, TypeStepMeta], num_decode: int) -> None:
        self.meta = meta
        self.num_decode = num_decode

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float, softcap: float | None) -> torch.Tensor:
        m = self.meta[self.layer_spec[layer].name]
        k_cache, v_cache = self.storage.layer_kv[layer]
        k_cache[m.slot_page, m.slot_off] = k.to(k_cache.dtype)
        v_cache[m.slot_page, m.slot_off] = v.to(v_cache.dtype)
        out = torch.empty_like(q)
        nd = self.num_decode
        if nd:
            kg = k_cache[m.decode_pages].flatten(1, 2).transpose(1, 2)  # [S, Hkv, T, D]
            vg = v_cache[m.decode_pages].flatten(1, 2).transpose(1, 2)
            o = _attend(q[:nd].unsqueeze(2), kg, vg, m.decode_mask, scale, softcap)
            out[:nd] = o.squeeze(2)
        for start, end, pages, mask in m.prefills:
            if pages is None:
                kg, vg = k[start:end], v[start:end]
            else:
                kg, vg = k_cache[pages].flatten(0, 1), v_cache[pages].flatten(0, 1)
            kg, vg = kg.transpose(0, 1).unsqueeze(0), vg.transpose(0, 1).unsqueeze(0)  # [1, Hkv, T, D]
            o = _attend(q[start:end].transpose(0, 1).unsqueeze(0), kg, vg, mask, scale, softcap)
            out[start:end] = o[0].transpose(0, 1)
        return out
