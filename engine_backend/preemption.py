"""Preemption policies: which running request gives up its pages, how, and how it comes back.

``recompute`` drops the victim's pages; it re-enters the queue and computes its tokens again
(whatever the prefix cache still holds is a hit). ``swap`` (Pie) copies the victim's live pages
to the host tier and copies them back on re-admission, so nothing is recomputed; a full host tier
falls back to recompute. ``auto`` chooses per victim by comparing the two costs:

    swap      = 2 * bytes_to_copy / copy_bandwidth        (out now, back in later)
    recompute = tokens_to_recompute / prefill_speed

``bytes_to_copy`` counts the live pages the host tier does not already hold; ``tokens_to_recompute``
leaves out the leading blocks still in the device prefix cache (recompute would hit them). Both
rates are measured by the engine as it runs (``TransferRates``); until a rate is measured, ``auto``
swaps, which is the cheaper choice whenever compute is the bottleneck (Pie's premise).
"""
from __future__ import annotations

from dataclasses import dataclass

from .kv import NULL_PAGE, KVCacheManager
from .sequence import Sequence

PREEMPTION_MODES = ("auto", "swap", "recompute")


@dataclass
class TransferRates:
    """Smoothed rates the engine measures: host<->device copy bandwidth and prefill speed."""

    copy_bytes_per_s: float | None = None
    prefill_tokens_per_s: float | None = None

    def note_prefill(self, tokens: int, seconds: float) -> None:
        if tokens >= 16 and seconds > 0:  # decode-only steps say little about prefill speed
            rate = tokens / seconds
            p = self.prefill_tokens_per_s
            self.prefill_tokens_per_s = rate if p is None else 0.8 * p + 0.2 * rate


class RecomputePreemption:
    """Drop the victim's pages; it re-enters at the head of the queue and recomputes."""

    def choose_victim(self, running: list[Sequence]) -> int:
        """The most recently admitted request goes first: the oldest keep their progress."""
        return len(running) - 1

    def preempt(self, seq: Sequence, kv: KVCacheManager) -> bool:
        """Take the victim's device pages; True if they went to the host tier, False if dropped."""
        if seq.streamed:  # its pages are on the host already: it just stops running
            kv.pause(seq)
            return True
        if self.should_swap(seq, kv) and kv.swap_out(seq):
            return True
        kv.free(seq)
        return False

    def should_swap(self, seq: Sequence, kv: KVCacheManager) -> bool:
        return False

    def resume(self, seq: Sequence, kv: KVCacheManager, num_new_tokens: int) -> bool:
        """Bring a swapped-out request back before any prefix matching; False if the device has no room."""
        return kv.swap_in(seq, num_new_tokens)


class SwapPreemption(RecomputePreemption):
    def should_swap(self, seq, kv):
        return True


class AutoPreemption(RecomputePreemption):
    def __init__(self, rates: TransferRates):
        self.rates = rates

    def should_swap(self, seq, kv):
        bandwidth, speed = self.rates.copy_bytes_per_s, self.rates.prefill_tokens_per_s
        if bandwidth is None or speed is None:
            return True
        return 2 * swap_bytes(seq, kv) / bandwidth < recompute_tokens(seq, kv) / speed


def swap_bytes(seq: Sequence, kv: KVCacheManager) -> int:
    """Bytes a swap-out would copy: live pages whose block the host tier does not hold already."""
    keys = seq.block_keys(kv.block_size, seq.num_registered_blocks) if kv.enable_prefix_caching else []
    total = 0
    for m in kv.managers.values():
        for b, page in enumerate(seq.block_tables.get(m.name, [])):
            if page != NULL_PAGE and (b >= len(keys) or m.host is None or m.host.lookup(keys[b]) is None):
                total += m.spec.page_bytes
    return total


def recompute_tokens(seq: Sequence, kv: KVCacheManager) -> int:
    """Tokens a recompute would compute again: all but the leading blocks the device cache keeps."""
    full = next((m for m in kv.managers.values() if m.spec.shares_prefix), None)
    kept = 0
    for page in seq.block_tables.get(full.name, [])[:seq.num_registered_blocks] if full else []:
        if page == NULL_PAGE or page not in full.device.page_key:
            break
        kept += 1
    return max(seq.num_computed - kept * kv.block_size, 0)


def make_policy(mode: str, rates: TransferRates) -> RecomputePreemption:
    if mode == "recompute":
        return RecomputePreemption()
    if mode == "swap":
        return SwapPreemption()
    if mode == "auto":
        return AutoPreemption(rates)
    raise ValueError(f"preemption must be one of {', '.join(PREEMPTION_MODES)}, not {mode!r}")
