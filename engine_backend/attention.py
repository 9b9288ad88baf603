"""Paged attention in plain torch (CPU and CUDA): write the step's K/V into pages, gather, attend.

Per step and per layer type, ``build_step_metadata`` turns block tables into index and
mask tensors once; every layer of that type reuses them. Requests are attended in
groups, one SDPA call per group: all decoding requests (one query each) form one group,
and prefill chunks are grouped while padding them to a common shape wastes little
(the optimiser's batches are many similar chunks behind a shared cached prefix). A chunk
that starts its sequence and sits alone attends to its fresh K/V with no gather at all.

Cascade attention: when every request of a group reads the same leading pages (the
shared, cached instruction prefix of an LLM-SQL batch), those pages are gathered once
and attended by all of the group's queries together; each request's own pages are
attended separately, and the two partial softmaxes are merged by their log-sum-exps.
Without it, every request of every step would copy the whole shared prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv import KVSpec, PagedKVStorage

MAX_PADDING_WASTE = 1.3  # a group's padded attention cost may exceed its real cost by this factor


@dataclass
class AttnGroup:
    num_seqs: int
    q_len: int  # queries per sequence after padding
    token_slice: tuple[int, int] | None  # contiguous tokens, each sequence exactly q_len of them
    q_rows: torch.Tensor | None  # else: [num_seqs * q_len] token index of every padded query slot
    out_src: torch.Tensor | None  # padded slots that are real queries...
    out_dst: torch.Tensor | None  # ...and the tokens they answer for
    pages: torch.Tensor | None  # [num_seqs, blocks] pages to read, or None: attend to fresh K/V
    mask: torch.Tensor  # [num_seqs, 1, q_len, kv_len] bool, over ``pages``
    shared_pages: torch.Tensor | None = None  # [blocks] leading pages every query of the group sees
    staged: bool = False  # pages are staging slots of requests streamed from the host tier
    _bias: dict | None = None

    def mask_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an additive float tensor (0 / -inf), made once per step and dtype."""
        if self._bias is None:
            self._bias = {}
        if dtype not in self._bias:
            self._bias[dtype] = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device).masked_fill_(
                ~self.mask, float("-inf"))
        return self._bias[dtype]


@dataclass
class TypeStepMeta:
    slot_page: torch.Tensor  # [Nd] page of each new token of a device-resident request
    slot_off: torch.Tensor  # [Nd] offset inside that page
    groups: list[AttnGroup]
    num_device_tokens: int = 0  # the batch's first tokens; the rest belong to streamed requests
    stage_slot: torch.Tensor | None = None  # [N - Nd] staging slot of each streamed request's new token
    stage_off: torch.Tensor | None = None


def plan_groups(starts: list[int], counts: list[int], num_decode: int) -> list[list[int]]:
    """Split requests (decoders first) into groups that share one padded attention call."""
    groups = [list(range(num_decode))] if num_decode else []
    order = sorted(range(num_decode, len(counts)), key=lambda i: -counts[i])
    current: list[int] = []
    for i in order:
        trial = current + [i]
        L = max(counts[j] for j in trial)
        T = max(starts[j] + counts[j] for j in trial)
        real = sum(counts[j] * (starts[j] + counts[j]) for j in trial)
        if current and len(trial) * L * T > MAX_PADDING_WASTE * real:
            groups.append(current)
            trial = [i]
        current = trial
    if current:
        groups.append(current)
    return groups


def build_step_metadata(spec: KVSpec, tables: list[list[int]], starts: list[int], counts: list[int],
                        groups: list[list[int]], device, num_device: int | None = None) -> TypeStepMeta:
    """``tables``/``starts``/``counts``: per request in token order; ``groups`` from ``plan_groups``.

    Requests from ``num_device`` on are streamed: their tables name staging slots, and no group mixes
    them with device-resident requests."""
    B = spec.block_size
    num_device = len(tables) if num_device is None else num_device
    slot_page, slot_off, offsets = [], [], []
    for table, start, n in zip(tables, starts, counts):
        offsets.append(len(slot_page))
        for pos in range(start, start + n):
            slot_page.append(table[pos // B])
            slot_off.append(pos % B)

    def to(t):
        return t.to(device, non_blocking=True)

    out = []
    for members in groups:
        S = len(members)
        L = max(counts[i] for i in members)
        q_pos = torch.tensor([[starts[i] + j for j in range(L)] for i in members])  # [S, L]
        valid_q = torch.tensor([[j < counts[i] for j in range(L)] for i in members])
        contiguous = all(counts[i] == L for i in members) and all(
            offsets[b] == offsets[a] + L for a, b in zip(members, members[1:]))
        if contiguous:
            token_slice, q_rows, out_src, out_dst = (offsets[members[0]], offsets[members[0]] + S * L), None, None, None
        else:
            token_slice = None
            rows = torch.tensor([[offsets[i] + min(j, counts[i] - 1) for j in range(L)] for i in members]).flatten()
            keep = valid_q.flatten()
            q_rows, out_src, out_dst = to(rows), to(keep.nonzero().flatten()), to(rows[keep])
        if S == 1 and starts[members[0]] == 0:  # nothing cached before this chunk: no gather
            pages, kv_pos = None, q_pos[:, None, :]  # [1, 1, L]
        else:
            firsts = [spec.first_needed_block(starts[i]) for i in members]
            lasts = [(starts[i] + counts[i] - 1) // B for i in members]
            shared = _shared_leading_pages(spec, [tables[i] for i in members], firsts, [starts[i] for i in members])
            if shared:
                firsts = [lo + len(shared) for lo in firsts]
            width = max(hi - lo + 1 for lo, hi in zip(firsts, lasts))
            pages = to(torch.tensor([tables[i][lo:hi + 1] + [0] * (width - (hi - lo + 1))
                                     for i, lo, hi in zip(members, firsts, lasts)], dtype=torch.long))
            kv_pos = (torch.tensor(firsts)[:, None] * B + torch.arange(width * B)[None, :])[:, None, :]  # [S,1,T]
        q = q_pos[:, :, None]  # [S, L, 1]
        mask = spec.visible(kv_pos, q)
        mask |= ~valid_q[:, :, None] & (kv_pos == kv_pos[..., :1])  # padded queries see one key: no NaN rows
        shared_pages = to(torch.tensor(shared, dtype=torch.long)) if pages is not None and shared else None
        out.append(AttnGroup(S, L, token_slice, q_rows, out_src, out_dst, pages, to(mask[:, None]), shared_pages,
                             staged=members[0] >= num_device))
    nd = offsets[num_device] if num_device < len(tables) else len(slot_page)

    def index(values):
        return to(torch.tensor(values, dtype=torch.long))
    staged = nd < len(slot_page)
    return TypeStepMeta(index(slot_page[:nd]), index(slot_off[:nd]), out, nd,
                        index(slot_page[nd:]) if staged else None, index(slot_off[nd:]) if staged else None)


def _shared_leading_pages(spec: KVSpec, tables: list[list[int]], firsts: list[int], starts: list[int]) -> list[int]:
    """Pages every request of a group reads first and every query sees whole (types that share a prefix)."""
    if not spec.shares_prefix or len(tables) < 2 or len(set(firsts)) != 1:
        return []
    lo = firsts[0]
    limit = min(starts) // spec.block_size  # blocks wholly before every query: visible to all of them
    shared = []
    for b in range(lo, limit):
        page = tables[0][b]
        if any(t[b] != page for t in tables[1:]):
            break
        shared.append(page)
    return shared if len(shared) >= 2 else []


# CPU's fused attention kernel that also returns the log-sum-exp (what SDPA runs on CPU); cascade
# attention needs the log-sum-exp to merge, so without it (CUDA, softcaps) we do the softmax by hand.
_FLASH_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention_with_lse(q, k, v, bias, scale, softcap):
    """Attention of q [S,Hq,L,D] over k/v [S,Hkv,T,D] (additive float ``bias`` [S,1,L,T] or None).

    Returns the normalised output [S,Hq,L,D] in float32 and the log-sum-exp [S,Hq,L,1].
    """
    S, Hq, L, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    if G > 1:  # grouped-query: a KV head's G query heads become G*L query rows, so K/V are not copied
        q = q.reshape(S, Hkv, G * L, D)
        if bias is not None:
            bias = bias.repeat(1, 1, G, 1)
    if _FLASH_WITH_LSE is not None and softcap is None and q.device.type == "cpu":
        out, lse = _FLASH_WITH_LSE(q, k, v, attn_mask=bias, scale=scale)
        out, lse = out.float(), lse.float().unsqueeze(-1)
    else:
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale)
        if softcap is not None:
            scores = scores.div_(softcap).tanh_().mul_(softcap)
        if bias is not None:
            scores = scores.add_(bias)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        out = torch.matmul(scores.sub_(lse).exp_(), v.float())
    return out.reshape(S, Hq, L, D), lse.reshape(S, Hq, L, 1)


def _cascade_attend(q, k_shared, v_shared, k, v, bias, scale, softcap):
    """q [S,Hq,L,D]; shared k/v [1,Hkv,Ts,D] seen by every query; own k/v [S,Hkv,T,D] under ``bias``."""
    S, Hq, L, D = q.shape
    # the shared part: all S*L queries of a head against one copy of the shared keys
    q_all = q.transpose(0, 1).reshape(1, Hq, S * L, D)
    o1, lse1 = _attention_with_lse(q_all, k_shared, v_shared, None, scale, softcap)
    o1, lse1 = (t.reshape(Hq, S, L, -1).transpose(0, 1) for t in (o1, lse1))
    o2, lse2 = _attention_with_lse(q, k, v, bias, scale, softcap)
    lse = torch.logaddexp(lse1, lse2)
    return (o1 * torch.exp(lse1 - lse) + o2 * torch.exp(lse2 - lse)).to(q.dtype)


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

    def __init__(self, storage: PagedKVStorage, layer_spec: dict[int, KVSpec], staging=None):
        self.storage = storage
        self.layer_spec = layer_spec
        self.staging = staging  # ``kv.storage.StagingBuffers`` when requests may stream from the host tier
        self.meta: dict[str, TypeStepMeta] = {}
        self.copies = None  # this step's copies between KV tiers (``kv.copier.StepCopies``), if any

    def begin_step(self, meta: dict[str, TypeStepMeta], copies=None) -> None:
        self.meta = meta
        self.copies = copies

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float, softcap: float | None) -> torch.Tensor:
        if self.copies is not None:  # the layer's pages are in (and the pages it writes are out) first
            self.copies.wait(layer)
        name = self.layer_spec[layer].name
        m = self.meta[name]
        k_cache, v_cache = self.storage.layer_kv[layer]
        nd = m.num_device_tokens
        if nd == q.shape[0]:
            k_cache[m.slot_page, m.slot_off] = k.to(k_cache.dtype)
            v_cache[m.slot_page, m.slot_off] = v.to(v_cache.dtype)
        else:
            k_cache[m.slot_page, m.slot_off] = k[:nd].to(k_cache.dtype)
            v_cache[m.slot_page, m.slot_off] = v[:nd].to(v_cache.dtype)
            k_stage, v_stage = self.staging.layer_kv[layer]
            k_stage[m.stage_slot, m.stage_off] = k[nd:].to(k_stage.dtype)
            v_stage[m.stage_slot, m.stage_off] = v[nd:].to(v_stage.dtype)
        if len(m.groups) == 1 and m.groups[0].token_slice == (0, q.shape[0]):
            out = self._group(m.groups[0], layer, q, k, v, scale, softcap).reshape(q.shape)
        else:
            out = torch.empty_like(q)
            for g in m.groups:
                o = self._group(g, layer, q, k, v, scale, softcap)
                if g.token_slice is not None:
                    out[g.token_slice[0]:g.token_slice[1]] = o
                else:
                    out[g.out_dst] = o[g.out_src]
        if self.copies is not None:
            self.copies.layer_done(layer)
        return out

    def _group(self, g: AttnGroup, layer, q, k, v, scale, softcap) -> torch.Tensor:
        """Attention for one group; returns [num_seqs * q_len, Hq, D]."""
        S, L = g.num_seqs, g.q_len
        if g.token_slice is not None:
            a, b = g.token_slice
            qg = q[a:b].view(S, L, *q.shape[1:])
        else:
            qg = q[g.q_rows].view(S, L, *q.shape[1:])
        if g.pages is None:
            a, b = g.token_slice
            kg, vg = k[a:b].unsqueeze(0), v[a:b].unsqueeze(0)
        else:
            if g.staged:
                k_cache, v_cache = self.staging.layer_kv[layer]
            else:
                k_cache, v_cache = self.storage.layer_kv[layer]
            kg, vg = k_cache[g.pages].flatten(1, 2), v_cache[g.pages].flatten(1, 2)  # [S, T, Hkv, D], no copy
        if g.shared_pages is not None:
            ks = k_cache[g.shared_pages].flatten(0, 1).transpose(0, 1).unsqueeze(0)  # [1, Hkv, Ts, D]
            vs = v_cache[g.shared_pages].flatten(0, 1).transpose(0, 1).unsqueeze(0)
            o = _cascade_attend(qg.transpose(1, 2), ks, vs, kg.transpose(1, 2), vg.transpose(1, 2),
                                g.mask_bias(qg.dtype), scale, softcap)
        else:
            o = _attend(qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2), g.mask, scale, softcap)
        return o.transpose(1, 2).reshape(S * L, *q.shape[1:])
