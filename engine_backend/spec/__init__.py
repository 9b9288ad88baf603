"""Speculative decoding with SmartSpec's per-request, per-step choice of how far to speculate.

``proposers.py``: where draft tokens come from (prompt lookup, batch lookup, a draft model);
``goodput.py``: the acceptance and batch-time estimates and the choice of k;
``speculator.py``: what the engine calls around each step. Verification itself lives where the
tokens are made: the scheduler budgets drafts, the runner returns logits at each of them, and the
sampler accepts or rejects them (``engine_backend/sampler.py``).
"""
from .goodput import AcceptanceEstimator, BatchTimeModel, choose_lengths, expected_tokens
from .proposers import BatchLookupProposer, DraftModelProposer, PromptLookupProposer, Proposer
from .speculator import METHODS, Speculator, parse_options

__all__ = ["AcceptanceEstimator", "BatchTimeModel", "BatchLookupProposer", "DraftModelProposer", "METHODS",
           "PromptLookupProposer", "Proposer", "Speculator", "choose_lengths", "expected_tokens", "parse_options"]
