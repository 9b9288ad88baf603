"""Run one scheduled batch through the model: flatten tokens, attend over pages, return logits.

Requests are laid out decoders first, then prefill chunks; logits are computed only at
the last position of requests that are ready to sample. The batch may carry several
new tokens for a request that has already started (a prefill chunk today, a draft to
verify with speculative decoding later): attention and positions handle any count.

With a host tier, the batch also carries the copies between tiers that the scheduler recorded;
they start before the forward pass and each layer waits only for its own (``kv/copier.py``).
"""
from __future__ import annotations

import torch

from .attention import PagedAttention, build_step_metadata, plan_groups
from .kv import KVCacheManager, PagedKVStorage
from .kv.copier import KVCopier
from .scheduler import ScheduledBatch
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model, kv: KVCacheManager, storage: PagedKVStorage, device,
                 host_storage: PagedKVStorage | None = None):
        self.model = model
        self.kv = kv
        self.device = torch.device(device)
        layer_spec = {layer: s for s in kv.specs for layer in s.layers}
        self.attention = PagedAttention(storage, layer_spec)
        self.copier = KVCopier(kv.specs, storage, host_storage, device) if host_storage is not None else None

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        """Compute the batch; return the requests that sample now and their logits (float32, CPU)."""
        copies = self.copier.start(batch.swap_out, batch.swap_in) if batch.has_copies else None
        try:
            if not batch.seqs:
                return [], torch.empty(0)
            return self._forward(batch, copies)
        finally:
            self.attention.copies = None
            if copies is not None:  # every copy completes, even if the forward failed: the books say so
                copies.finish()
                self.kv.after_copies()

    def _forward(self, batch: ScheduledBatch, copies) -> tuple[list[Sequence], torch.Tensor]:
        pairs = list(zip(batch.seqs, batch.num_new_tokens))
        decodes = [(s, n) for s, n in pairs if n == 1]
        prefills = [(s, n) for s, n in pairs if n != 1]
        ordered = decodes + prefills
        starts = [s.num_computed for s, _ in ordered]
        counts = [n for _, n in ordered]
        input_ids, positions, sample_rows, sample_seqs = [], [], [], []
        for (seq, n), start in zip(ordered, starts):
            input_ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            if start + n == len(seq.token_ids):
                sample_rows.append(len(input_ids) - 1)
                sample_seqs.append(seq)
        groups = plan_groups(starts, counts, len(decodes))
        meta = {
            s.name: build_step_metadata(s, [seq.block_tables[s.name] for seq, _ in ordered], starts, counts,
                                        groups, self.device)
            for s in self.kv.specs
        }
        self.attention.begin_step(meta, copies)
        ids = torch.tensor(input_ids, dtype=torch.long).to(self.device, non_blocking=True)
        pos = torch.tensor(positions, dtype=torch.long).to(self.device, non_blocking=True)
        hidden = self.model(ids, pos, self.attention)
        if not sample_rows:
            return [], torch.empty(0)
        rows = torch.tensor(sample_rows, dtype=torch.long).to(self.device, non_blocking=True)
        logits = self.model.compute_logits(hidden[rows]).float().cpu()
        return sample_seqs, logits
