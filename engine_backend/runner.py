"""Run one scheduled batch through the model: flatten tokens, attend over pages, return logits.

Requests are laid out decoders first, then prefill chunks; logits are computed only at
the last position of requests that are ready to sample, and, for a request verifying
speculative tokens (``seq.draft_token_ids``), at each of them too: 1 + k rows, in order.
Attention and positions handle any count of new tokens per request.

With a host tier, the batch also carries the copies between tiers that the scheduler recorded;
they start before the forward pass and each layer waits only for its own (``kv/copier.py``).
Requests streamed from the host tier come last: their pages are numbered by staging slot, gathered
layer by layer, and their attention groups read the staging buffers.
"""
from __future__ import annotations

import torch

from .attention import PagedAttention, build_step_metadata, plan_groups
from .kv import NULL_PAGE, KVCacheManager, PagedKVStorage
from .kv.copier import KVCopier, StreamPlan
from .kv.storage import StagingBuffers
from .scheduler import ScheduledBatch
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model, kv: KVCacheManager, storage: PagedKVStorage, device,
                 host_storage: PagedKVStorage | None = None, staging: StagingBuffers | None = None):
        self.model = model
        self.kv = kv
        self.device = torch.device(device)
        layer_spec = {layer: s for s in kv.specs for layer in s.layers}
        self.attention = PagedAttention(storage, layer_spec, staging)
        self.copier = (KVCopier(kv.specs, storage, host_storage, staging, device)
                       if host_storage is not None else None)
        self.last_stream_hidden: float | None = None  # of the last step's streamed layers, hidden share

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        """Compute the batch; return the requests that sample now and their logits (float32, CPU): one row
        each, plus one per speculative token it carries."""
        plan, slot_of = self._stream_plan(batch)
        copies = self.copier.start(batch.swap_out, batch.swap_in, plan) if batch.has_copies or plan else None
        self.last_stream_hidden = None
        try:
            if not batch.seqs:
                return [], torch.empty(0)
            return self._forward(batch, copies, slot_of)
        finally:
            self.attention.copies = None
            if copies is not None:  # every copy completes, even if the forward failed: the books say so
                copies.finish()
                self.last_stream_hidden = copies.stream_hidden_fraction
            self.kv.after_copies()  # also when a resume found every block on the device and copied nothing

    def _stream_plan(self, batch: ScheduledBatch) -> tuple[StreamPlan, dict[str, dict[int, int]]]:
        """Staging slots for the host pages of streamed requests (one per distinct page), and which of them
        the step writes."""
        plan, slot_of = StreamPlan(), {}
        B = self.kv.block_size
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if not seq.streamed:
                continue
            written = range(seq.num_computed // B, (seq.num_computed + n - 1) // B + 1)
            for name, table in seq.block_tables.items():
                pages, slots = plan.pages.setdefault(name, []), slot_of.setdefault(name, {})
                for b, page in enumerate(table):
                    if page != NULL_PAGE and page not in slots:
                        slots[page] = len(pages)
                        pages.append(page)
                plan.written.setdefault(name, []).extend(slots[table[b]] for b in written)
        for name, pages in plan.pages.items():  # the scheduler keeps within the share; a breach is a bug
            if len(pages) > self.kv.stream_slots.get(name, 0):
                raise RuntimeError(f"{len(pages)} streamed {name} pages exceed the "
                                   f"{self.kv.stream_slots.get(name, 0)} staging slots")
        return plan, slot_of

    def _forward(self, batch: ScheduledBatch, copies, slot_of) -> tuple[list[Sequence], torch.Tensor]:
        pairs = list(zip(batch.seqs, batch.num_new_tokens))
        on_device = [(s, n) for s, n in pairs if not s.streamed]
        streamed = [(s, n) for s, n in pairs if s.streamed]
        parts = [[(s, n) for s, n in part if n == 1] + [(s, n) for s, n in part if n != 1]
                 for part in (on_device, streamed)]
        ordered = parts[0] + parts[1]
        starts = [s.num_computed for s, _ in ordered]
        counts = [n for _, n in ordered]
        input_ids, positions, sample_rows, sample_seqs = [], [], [], []
        for (seq, n), start in zip(ordered, starts):
            tokens = seq.token_ids[start:start + n]
            drafts = seq.draft_token_ids
            if start + n > len(seq.token_ids):  # a decoding request with speculative tokens to verify
                tokens = tokens + drafts[:start + n - len(seq.token_ids)]
            input_ids.extend(tokens)
            positions.extend(range(start, start + n))
            if start + n == len(seq.token_ids) + len(drafts):  # logits at its last real token and every draft
                sample_rows.extend(range(len(input_ids) - 1 - len(drafts), len(input_ids)))
                sample_seqs.append(seq)
        nd = len(on_device)
        groups = plan_groups(starts[:nd], counts[:nd], sum(n == 1 for _, n in on_device)) + [
            [nd + i for i in g] for g in plan_groups(starts[nd:], counts[nd:], sum(n == 1 for _, n in streamed))]

        def table(seq, name):  # streamed requests' pages by staging slot
            if not seq.streamed:
                return seq.block_tables[name]
            return [p if p == NULL_PAGE else slot_of[name][p] for p in seq.block_tables[name]]
        meta = {
            s.name: build_step_metadata(s, [table(seq, s.name) for seq, _ in ordered], starts, counts,
                                        groups, self.device, nd)
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
