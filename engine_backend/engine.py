"""LLMEngine: load a checkpoint, admit requests, step the scheduler, return finished outputs."""
from __future__ import annotations

import itertools
import re
import time
from typing import Any

import torch

from .constraints import ChoiceTrie
from .kv import KVCacheManager, PagedKVStorage, large_page_elems, specs_for_model
from .kv.storage import STAGING_DEPTH, StagingBuffers, split_budget
from .loader import load_model, read_config
from .logprobs import TokenLogprob, raw_logprobs, token_logprobs
from .preemption import PREEMPTION_MODES, TransferRates, make_policy
from .reasoning import ReasoningState, require_format
from .runner import ModelRunner
from .sampler import sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import RequestOutput, Sequence
from .spec import Speculator, parse_options
from .tokenizer import Tokenizer

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: int | str) -> int:
    """``536870912``, ``"512MB"``, ``"1.5GiB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {value!r} (try 536870912, '512MB' or '2GiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class LLMEngine:
    """The embedded inference engine.

    ``kv_cache_memory`` is the KV budget in bytes (or ``"512MB"``); by default it holds
    ``max_num_seqs`` requests of full context, capped at 1 GiB on CPU and 40% of free
    memory on CUDA.

    ``swap_space`` (bytes or ``"4GiB"``) adds Pie's host tier: preempted requests are swapped
    there instead of recomputed, and prefix-cache blocks evicted from the device are kept there.
    It defaults to 4 GiB of pinned memory on CUDA and to none on CPU (where both tiers would be
    the same memory). ``preemption`` is ``"auto"`` (per victim, the cheaper of swap and
    recompute by measured rates), ``"swap"`` or ``"recompute"``.

    With a host tier and swapping, running requests beyond the device pool can also run *streamed*
    from the host (Pie's expansion): their pages pass through small device staging buffers one layer
    at a time, prefetched ahead of the layer. ``stream_expansion`` is how many times the pool's KV may
    stream; the staging it needs comes out of ``kv_cache_memory``. By default (None) it is 2 when that
    staging costs at most a quarter of the budget (models with many layers), else 0. How much of it is
    used adapts to whether the prefetches hide behind compute (``stats()["stream_share"]``).

    ``speculative`` turns on speculative decoding (``engine_backend.spec``): ``{"method": "ngram" | "batch" |
    "draft" | [several], "num_speculative_tokens": "auto" | k, "draft_model": DIR}`` (``"ngram"`` alone is
    short for ``{"method": "ngram"}``). Outputs are unchanged: greedy tokens equal those without it, and
    sampled ones keep their distribution. ``"auto"`` (the default) lets SmartSpec choose each request's
    k every step, 0 included, for the most tokens per second.
    """

    def __init__(self, model: str, device: str = "cpu", dtype=None, kv_cache_memory: int | str | None = None,
                 enable_prefix_caching: bool = True, block_size: int = 16, max_num_seqs: int = 128,
                 max_num_batched_tokens: int = 1024, max_model_len: int | None = None, seed: int = 0,
                 swap_space: int | str | None = None, preemption: str = "auto",
                 stream_expansion: float | None = None, speculative: dict | str | None = None):
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        spec_options = parse_options(speculative)  # before anything loads: a typo fails fast
        if preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {', '.join(PREEMPTION_MODES)}, not {preemption!r}")
        self.device = torch.device(device)
        self.model_path = str(model)
        self.config = read_config(model)  # clear errors for a malformed directory
        self.model = load_model(model, dtype=dtype, device=device)
        self.tokenizer = Tokenizer.from_dir(model)
        self.model_name = self.model_path.rstrip("/").split("/")[-1]
        self.max_model_len = min(max_model_len or self.config.max_position_embeddings,
                                 self.config.max_position_embeddings)
        self.dtype = next(self.model.parameters()).dtype

        specs = specs_for_model(self.config, block_size, self.dtype)
        page_bytes = large_page_elems(specs) * self.dtype.itemsize
        probe = KVCacheManager(specs, 0)
        one_request = probe.large_pages_for_one_request(self.max_model_len)
        budget = (parse_bytes(kv_cache_memory) if kv_cache_memory is not None
                  else self._default_budget(one_request * page_bytes, max_num_seqs))
        num_pages = budget // page_bytes
        if num_pages < one_request:
            raise ValueError(
                f"kv_cache_memory={budget} bytes holds {num_pages} KV pages of {page_bytes} bytes, but one "
                f"request of max_model_len={self.max_model_len} tokens needs {one_request} pages "
                f"({one_request * page_bytes} bytes): raise kv_cache_memory or lower max_model_len")
        swap_bytes = (parse_bytes(swap_space) if swap_space is not None
                      else 4 * 2**30 if self.device.type == "cuda" else 0)
        num_host_pages = swap_bytes // page_bytes
        if swap_space is not None and swap_bytes and num_host_pages == 0:
            raise ValueError(f"swap_space={swap_bytes} bytes holds no KV page of {page_bytes} bytes: "
                             f"raise it to at least {page_bytes} or set 0 for no host tier")
        if preemption == "swap" and not num_host_pages:
            raise ValueError("preemption='swap' needs a host tier: set swap_space (e.g. '4GiB')")
        num_pages, stream_slots = split_budget(specs, budget, stream_expansion,
                                               num_host_pages if preemption != "recompute" else 0, one_request)
        self.kv = KVCacheManager(specs, num_pages, enable_prefix_caching, num_host_pages=num_host_pages)
        self.kv.stream_slots = stream_slots
        self.storage = PagedKVStorage(specs, num_pages, large_page_elems(specs), self.device)
        self.host_storage = (PagedKVStorage(specs, num_host_pages, large_page_elems(specs), self.device, host_tier=True)
                             if num_host_pages else None)
        self.staging = StagingBuffers(specs, stream_slots, STAGING_DEPTH, self.device) if stream_slots else None
        self.rates = TransferRates()
        self.scheduler = Scheduler(self.kv, max_num_seqs, max(max_num_batched_tokens, 1),
                                   preemption=make_policy(preemption, self.rates))
        self.runner = ModelRunner(self.model, self.kv, self.storage, self.device, self.host_storage, self.staging)
        self._rng = torch.Generator().manual_seed(seed)
        self._ids = itertools.count()
        self._seqs: dict[str, Sequence] = {}
        self._constraints: dict[str, Any] = {}  # request id -> output constraint (choices, grammar)
        self._eos = set(self.tokenizer.eos_token_ids)
        self._generated_tokens = 0
        self._finished = 0
        self._step_seconds = 0.0
        self._peak_active = 0  # most large pages held by running requests (not the cache) after a step's allocation
        self.speculator = Speculator(spec_options, self) if spec_options else None

    def _default_budget(self, bytes_per_request: int, max_num_seqs: int) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            cap = int(free * 0.4)
        else:
            cap = 2**30
        return max(bytes_per_request, min(bytes_per_request * max_num_seqs, cap))

    # ---- requests ------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queue one request; raises ``ValueError`` (and queues nothing) for bad input."""
        params = params or SamplingParams()
        params.validate()
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("empty prompt")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not ids:
                raise ValueError("empty prompt")
            if any(not isinstance(t, int) or not 0 <= t < self.config.vocab_size for t in ids):
                raise ValueError(f"prompt token ids must be integers in [0, {self.config.vocab_size})")
        reasoning = None
        if params.reasoning:
            ids, reasoning = self._start_reasoning(prompt, ids, params)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt is {len(ids)} tokens; the model's context is {self.max_model_len} "
                             "tokens, prompt and at least one generated token included")
        if params.logit_bias and max(params.logit_bias) >= self.config.vocab_size:
            raise ValueError(f"logit_bias token ids must be below the vocabulary size {self.config.vocab_size}")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        seq = Sequence(request_id, ids, params, next(self._ids))
        seq.reasoning = reasoning
        constraint = self._constraint_of(params)
        if constraint is not None:
            self._constraints[request_id] = constraint
            seq.constraint_node = constraint.start()
        if params.logprobs is not None:
            seq.logprobs = []
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, (1,), generator=self._rng))
            seq.generator = torch.Generator().manual_seed(seed)
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def abort_request(self, request_id: str) -> None:
        seq = self._seqs.pop(request_id, None)
        if seq is not None:
            self.scheduler.finish(seq)
            self._constraints.pop(request_id, None)
            if self.speculator is not None:
                self.speculator.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    # ---- stepping ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return the requests that finished in it."""
        t0 = time.perf_counter()
        if self.speculator is not None:
            self.speculator.plan(self.scheduler)
        t_step = time.perf_counter()
        batch, failed = self.scheduler.schedule()
        if not batch and not failed and self.scheduler.has_work():
            # every step computes or finishes something; looping on here would hang generate() and the server
            raise RuntimeError(f"the scheduler scheduled nothing while requests wait: {self.scheduler.describe()}")
        done: list[Sequence] = list(failed)  # finished with an error that says what budget they need
        if not batch and not batch.has_copies:
            self.kv.after_copies()
        else:
            shape = self.speculator.step_shape(batch) if self.speculator is not None else None
            sample_seqs, logits = self.runner.run(batch)
            self._learn_from_step(batch, time.perf_counter() - t0)
            for seq, n in zip(batch.seqs, batch.num_new_tokens):
                seq.num_computed += n
            wanted = raw_logprobs(logits, sample_seqs)  # before sample() penalises and masks in place
            for i, (seq, tokens) in enumerate(zip(sample_seqs, sample(logits, sample_seqs, self._constraints))):
                self._accept(seq, tokens, token_logprobs(wanted[i], tokens, seq.params.logprobs) if i in wanted else None)
            if self.speculator is not None:
                self.speculator.observe_step(shape, time.perf_counter() - t_step)
            self._peak_active = max(self._peak_active, self.kv.num_active_large_pages)
            for seq in batch.seqs:
                self.scheduler.after_step(seq)
                if seq.finish_reason is not None:
                    done.append(seq)
        outputs = []
        for seq in done:
            self.scheduler.finish(seq)
            self._seqs.pop(seq.request_id, None)
            self._constraints.pop(seq.request_id, None)
            if self.speculator is not None:
                self.speculator.finish(seq)
            self._finished += 1
            outputs.append(self._output(seq))
        self._step_seconds += time.perf_counter() - t0
        return outputs

    def _learn_from_step(self, batch, seconds: float) -> None:
        """What the host tier adapts to: prefill speed and copy bandwidth for the swap-or-recompute choice,
        and whether this step's streamed layers waited, for the streamed share."""
        prefill = sum(n for s, n in zip(batch.seqs, batch.num_new_tokens) if n - len(s.draft_token_ids) > 1)
        self.rates.note_prefill(prefill, seconds)  # a decode verifying drafts is not prefill
        if self.runner.copier is not None:
            self.rates.copy_bytes_per_s = self.runner.copier.bandwidth
        self.kv.adapt_stream_share(self.runner.last_stream_hidden)

    def _accept(self, seq: Sequence, tokens: list[int], logprobs: list | None = None) -> None:
        """Append a request's verified tokens, one at a time, until it finishes; roll back the KV of rejected drafts.
        ``logprobs``: one entry per token, kept for the tokens appended."""
        rejected = len(seq.draft_token_ids) - (len(tokens) - 1)
        if rejected:
            seq.num_computed -= rejected
            self.kv.truncate(seq, seq.num_computed)
        if self.speculator is not None:
            self.speculator.verified(seq, tokens)
        appended = []
        for token in tokens:
            self._append(seq, token)
            appended.append(token)
            if seq.finish_reason is not None:
                break
        if logprobs is not None:
            seq.logprobs.extend(logprobs[:len(appended)])
            # an end-of-reasoning marker the engine appended was not sampled: certain, probability 1
            seq.logprobs.extend(TokenLogprob(0.0, []) for _ in range(seq.num_output_tokens - len(seq.logprobs)))
        if self.speculator is not None:
            self.speculator.appended(seq, appended)

    def _append(self, seq: Sequence, token: int) -> None:
        seq.token_ids.append(token)
        self._generated_tokens += 1
        p = seq.params
        if seq.reasoning is not None and seq.reasoning.thinking:
            self._think(seq, token)
            return
        constraint = self._constraints.get(seq.request_id)
        if constraint is not None:
            seq.constraint_node, complete = constraint.step(seq.constraint_node, token)
            if complete:
                seq.finish_reason = "stop"
        elif (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids:
            seq.finish_reason = "stop"
        elif p.stop:
            text = self.tokenizer.decode(seq.answer_token_ids)
            hits = [i for i in (text.find(s) for s in p.stop) if i >= 0]
            if hits:
                seq.stop_text_len = min(hits)
                seq.finish_reason = "stop"
        if seq.finish_reason is None:
            if (constraint is None or not constraint.bounded) and seq.num_answer_tokens >= p.max_tokens:
                seq.finish_reason = "length"
            elif len(seq.token_ids) >= self.max_model_len:
                seq.finish_reason = "length"

    def _think(self, seq: Sequence, token: int) -> None:
        """A token inside a reasoning block: count it, see whether it closed the block, close it at the budget.
        EOS still ends the request (with an empty answer); ``max_tokens`` waits for the answer."""
        closing = seq.reasoning.observe(self._token_bytes(token), seq.num_output_tokens)
        for t in closing:  # computed next step like any uncomputed tokens; they do not count as sampled
            seq.token_ids.append(t)
        if (token in self._eos and not seq.params.ignore_eos) or token in seq.params.stop_token_ids:
            seq.finish_reason = "stop"
        elif len(seq.token_ids) >= self.max_model_len:
            seq.finish_reason = "length"

    def _token_bytes(self, token: int) -> bytes:
        # a special token (some checkpoints make </think> one) shows as its name, so the end marker still matches
        return self.tokenizer.decode_token_bytes(token) or (self.tokenizer.id_to_token(token) or "").encode()

    def _start_reasoning(self, prompt: str | list[int], ids: list[int],
                         params: SamplingParams) -> tuple[list[int], ReasoningState]:
        """The prompt of a request that thinks first (a text prompt rendered with thinking on, token ids as they
        are) and its open reasoning block (see ``engine_backend.reasoning``)."""
        fmt = require_format(self.tokenizer, self.model_name)
        if isinstance(prompt, str):
            text = fmt.render(self.tokenizer, [{"role": "user", "content": prompt}], thinking=True)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        state = ReasoningState.start(fmt, self.tokenizer, params.max_reasoning_tokens)
        if params.max_reasoning_tokens == 0:  # no room to think: the block is closed in the prompt
            ids = ids + state.close_ids
            state.answer_start = 0
        return ids, state

    def _constraint_of(self, params: SamplingParams):
        """The output constraint a request asks for, or None: a choice list or a grammar (cached per expression)."""
        if params.choices:
            return ChoiceTrie(params.choices, self.tokenizer)
        if params.json_schema is not None or params.regex is not None:
            from .grammar import compile_constraint

            return compile_constraint(self.tokenizer, self.config.vocab_size, json_schema=params.json_schema,
                                      regex=params.regex)
        return None

    def _output(self, seq: Sequence) -> RequestOutput:
        text, reasoning = "", None
        if seq.finish_reason != "error":
            text = self.tokenizer.decode(seq.answer_token_ids)
            if seq.stop_text_len is not None:
                text = text[:seq.stop_text_len]
            if seq.reasoning is not None:
                block = seq.output_token_ids[:len(seq.output_token_ids) - len(seq.answer_token_ids)]
                reasoning, _ = require_format(self.tokenizer, self.model_name).split(self.tokenizer.decode(block))
        return RequestOutput(seq.request_id, seq.token_ids[:seq.prompt_len], seq.output_token_ids, text,
                             seq.finish_reason, seq.num_cached_tokens, seq.error, seq.logprobs, reasoning,
                             seq.reasoning.num_tokens if seq.reasoning is not None else 0, seq.num_answer_tokens)

    def partial_output(self, request_id: str, start: int = 0) -> tuple[list[int], list | None] | None:
        """An unfinished request's generated tokens from ``start`` on, and their logprobs if it asked for them
        (None for a request that is not running here): what a streaming caller has not seen yet."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        ids = seq.token_ids[seq.prompt_len + start:]
        return ids, (seq.logprobs[start:] if seq.logprobs is not None else None)

    # ---- batch API -------------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for ``prompts`` (strings or token-id lists) in order; a bad prompt gives an error output."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        results: list[RequestOutput | None] = [None] * len(prompts)
        index: dict[str, int] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params_list)):
            try:
                index[self.add_request(prompt, p)] = i
            except ValueError as e:
                results[i] = RequestOutput(f"rejected-{i}", [], [], "", "error", 0, str(e))
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(index), desc="generate", unit="req", delay=1.0)  # long runs only
        try:
            while index:
                for out in self.step():
                    i = index.pop(out.request_id, None)
                    if i is not None:
                        results[i] = out
                        if bar:
                            bar.update(1)
        except BaseException:
            for request_id in index:  # a failed step leaves no request of this call behind
                self.abort_request(request_id)
            raise
        finally:
            if bar:
                bar.close()
        return results

    # ---- reporting -------------------------------------------------------------------------------
    def stats(self) -> dict:
        usage = self.kv.usage()
        s = self.scheduler
        return {
            "prompt_tokens": s.prompt_tokens,
            "cached_prompt_tokens": s.cached_prompt_tokens,
            "prefix_hit_rate": s.cached_prompt_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            "generated_tokens": self._generated_tokens,
            "num_requests_finished": self._finished,
            "preemptions": s.num_preemptions,
            "waiting": len(s.waiting),
            "running": len(s.running),
            "kv_pages_total": usage["large_pages_total"],
            "kv_pages_used": usage["large_pages_active"],  # held by requests now
            "kv_pages_cached": usage["large_pages_used"] - usage["large_pages_active"],  # only prefix cache
            "peak_kv_pages": usage["large_pages_peak"],
            "peak_kv_pages_running": self._peak_active,
            "kv_page_bytes": usage["large_page_bytes"],
            "kv_bytes_by_type": {name: t["used_bytes"] + t["cached_bytes"] for name, t in usage["types"].items()},
            "kv_types": usage["types"],
            "step_seconds": self._step_seconds,
            **self._swap_stats(usage),
            **self._spec_stats(),
        }

    def _spec_stats(self) -> dict:
        """SmartSpec's counters: draft tokens proposed and accepted, mean k over decoding request-steps."""
        if self.speculator is not None:
            return self.speculator.stats()
        return {"spec_proposed_tokens": 0, "spec_accepted_tokens": 0, "spec_mean_k": 0.0,
                "spec_acceptance_rate": 0.0, "spec_by_proposer": {}, "spec_step_time_weights": None}

    def _swap_stats(self, usage: dict) -> dict:
        """Pie's counters: blocks moved each way, host-tier hits and bytes, copy time and how much of it hid."""
        copier, s = self.runner.copier, self.scheduler
        return {
            "swapped_out_blocks": self.kv.swapped_out_blocks,
            "swapped_in_blocks": self.kv.swapped_in_blocks,
            "host_cached_prompt_tokens": s.host_cached_prompt_tokens,
            "host_kv_bytes_used": sum(t["host_used_bytes"] + t["host_cached_bytes"] for t in usage["types"].values()),
            "host_kv_bytes_total": self.host_storage.nbytes if self.host_storage is not None else 0,
            "swap_seconds": copier.seconds if copier else 0.0,
            "swap_hidden_fraction": copier.hidden_fraction if copier else 1.0,
            "streamed_running": sum(seq.streamed for seq in s.running),
            "stream_demotions": s.num_demotions,
            "stream_promotions": s.num_promotions,
            "stream_share": self.kv.stream_share if self.kv.stream_slots else 0.0,
            "kv_staging_bytes": self.staging.nbytes if self.staging is not None else 0,
            "preemptions_swapped": s.num_swapped_preemptions,
            "preemptions_recomputed": s.num_preemptions - s.num_swapped_preemptions,
        }

    def reset_prefix_cache(self) -> None:
        self.kv.reset_prefix_cache()
