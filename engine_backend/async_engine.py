"""Share one ``LLMEngine`` between many threads and asyncio loops.

``LLMEngine`` is not thread-safe, so a single background thread owns it: callers only
put commands on a queue (add a batch, abort, read stats, stop) and wait on a handle.
The thread drains the queue between ``step()`` calls, so a batch is admitted whole and
in order (the prefix cache sees the optimiser's order), and it blocks on the queue
while there is no work, so an idle engine costs nothing.

It measures the engine as ``EmbeddedBackend`` does, but per *busy period* rather than per
caller's batch, since batches from many callers run together: a period opens when requests
are admitted to an idle engine and closes when none is left unfinished. ``history()`` (a
``BatchHistory``) holds one record per period: the requests that ran (not those rejected at
admission), their uncached prompt and generated tokens, its wall seconds and its engine steps
(``engine_steps``: ``simulate_steps`` over the period's requests in admission order), and the
generated tokens per kind of request. A period in which a request was aborted or the engine
failed is not recorded (its counts would not be the work done), nor one larger than
``PERIOD_MAX_REQUESTS`` / ``PERIOD_MAX_PROMPT_TOKENS`` (kept in memory until it closes); the
finished requests of either still count towards their kind's generated tokens.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
import traceback
from array import array
from collections.abc import Sequence
from typing import Any, Callable

from engine_backend.backends.base import BatchHistory, GenerationResult
from engine_backend.backends.embedded import (engine_block_size, engine_cached_prefix_blocks, engine_steps,
                                              result_from_output)
from engine_backend.sampling_params import SamplingParams

log = logging.getLogger(__name__)

Prompt = str | list[int]


class EngineError(RuntimeError):
    """The engine failed while running a request (not the request's own fault)."""


class EngineClosedError(EngineError):
    """The async engine was shut down (or died) before the request finished."""


def _output(request_id: str, finish_reason: str, error: str | None = None, prompt_ids: Sequence[int] = ()):
    """A ``RequestOutput`` for a request that never produced tokens (rejected or aborted)."""
    from engine_backend import RequestOutput  # lazy: the package pulls in torch

    return RequestOutput(request_id=request_id, prompt_token_ids=list(prompt_ids), token_ids=[], text="",
                         finish_reason=finish_reason, num_cached_tokens=0, error=error)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    """Runs on the caller's loop: deliver unless the caller gave up meanwhile."""
    if not fut.done():
        fut.set_result(value)


class BatchHandle:
    """The pending results of one submitted batch, awaitable from any thread or loop.

    ``result()`` blocks a thread; ``await handle.wait()`` suspends a coroutine. Either
    returns the outputs in submission order, or raises ``EngineError`` if the engine
    failed. Cancelling a waiting coroutine aborts the batch's requests.
    """

    def __init__(self, owner: "AsyncLLMEngine", request_ids: list[str]):
        self._owner = owner
        self.request_ids = request_ids
        self._lock = threading.Lock()
        self._outputs: list[Any] = [None] * len(request_ids)
        self._left = len(request_ids)
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._loop_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        if not request_ids:
            self._done.set()

    # --- called by the engine thread -------------------------------------------------
    def _set(self, index: int, output: Any) -> None:
        with self._lock:
            if self._done.is_set() or self._outputs[index] is not None:
                return
            self._outputs[index] = output
            self._left -= 1
            if self._left:
                return
        self._finish()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = error
        self._finish()

    def _finish(self) -> None:
        self._done.set()
        with self._lock:
            waiters, self._loop_waiters = self._loop_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut, None)
            except RuntimeError:  # that caller's loop is closed: nobody left to tell
                pass

    # --- called by callers -------------------------------------------------------------
    def done(self) -> bool:
        return self._done.is_set()

    def _outcome(self) -> list[Any]:
        if self._error is not None:
            raise self._error
        return list(self._outputs)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Block until every request finished; ``TimeoutError`` after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"batch of {len(self.request_ids)} requests not finished after {timeout} s")
        return self._outcome()

    async def wait(self) -> list[Any]:
        """Await the outputs on the running loop; cancellation aborts the batch."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if not self._done.is_set():
                self._loop_waiters.append((loop, fut))
                pending = True
            else:
                pending = False
        if pending:
            try:
                await fut
            except asyncio.CancelledError:
                self.abort()
                raise
        return self._outcome()

    def abort(self) -> None:
        """Free the batch's unfinished requests; their outputs become ``finish_reason="abort"``."""
        if not self._done.is_set():
            for rid in self.request_ids:
                self._owner.abort(rid)


class BatchStream(BatchHandle):
    """A batch whose tokens arrive as they are generated, on the asyncio loop that opened it.

    ``async for event in stream.events()`` yields ``("tokens", index, token_ids, logprobs)`` after
    each engine step that extended request ``index`` (``logprobs`` is None unless it asked for
    them), ``("done", index, RequestOutput)`` once it finishes (the output holds every token), and
    ``("error", exception)`` if the engine failed, which ends the stream. Leaving the loop early
    does not abort: call ``abort()`` (the server does when a client disconnects).
    """

    def __init__(self, owner: "AsyncLLMEngine", request_ids: list[str], loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self.num_sent = [0] * len(request_ids)  # tokens reported per request (the engine thread's own count)
        super().__init__(owner, request_ids)

    def _push(self, event: tuple) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the caller's loop is closed: nobody is listening
            pass

    # --- called by the engine thread (the only thread that calls these) ---------------------
    def _progress(self, index: int, token_ids: list[int], logprobs: list | None) -> None:
        self.num_sent[index] += len(token_ids)
        self._push(("tokens", index, token_ids, logprobs))

    def _set(self, index: int, output: Any) -> None:
        if not self._done.is_set() and self._outputs[index] is None:
            self._push(("done", index, output))
        super()._set(index, output)

    def _fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._push(("error", error))
        super()._fail(error)

    # --- called by the caller, on its loop ---------------------------------------------------
    async def events(self):
        left = len(self.request_ids)
        while left:
            event = await self._events.get()
            yield event
            if event[0] == "error":
                return
            left -= event[0] == "done"


PERIOD_MAX_REQUESTS = 100_000  # a busy period longer than these is not recorded: its prompts are kept till it ends
PERIOD_MAX_PROMPT_TOKENS = 20_000_000


class _BusyPeriod:
    """The engine's current busy period (the engine thread's alone): its requests in admission order and, as each
    finishes, what its record needs of it (prompt token ids for ``engine_steps``, the result's counts)."""

    def __init__(self, start: float):
        self.start = start
        self.admitted: dict[str, tuple[int, SamplingParams]] = {}  # unfinished request -> (its slot, its params)
        self.ran: list[tuple[array, GenerationResult] | None] = []  # per slot, once finished
        self.prompt_tokens = 0
        self.measurable = True  # False once over the limits

    def admit(self, rid: str, params: SamplingParams) -> None:
        if self.measurable and len(self.ran) >= PERIOD_MAX_REQUESTS:
            self._too_large()
        self.admitted[rid] = (len(self.ran), params)
        if self.measurable:
            self.ran.append(None)

    def finish(self, out: Any) -> tuple[SamplingParams, GenerationResult] | None:
        """Note a request's output; its params and result, or None if it is not one of this period's."""
        entry = self.admitted.pop(out.request_id, None)
        if entry is None:
            return None
        slot, params = entry
        result = result_from_output(out)
        if self.measurable:
            self.prompt_tokens += len(out.prompt_token_ids)
            if self.prompt_tokens > PERIOD_MAX_PROMPT_TOKENS:
                self._too_large()
            else:
                self.ran[slot] = (array("q", out.prompt_token_ids), result)
        return params, result

    def _too_large(self) -> None:
        self.measurable, self.ran = False, []

    def measured(self, engine: Any, end: float) -> tuple[list[GenerationResult], float, int] | None:
        """(results in admission order, wall seconds, engine steps) for the period's record, or None when it is
        not one: a request it admitted did not finish in a step (aborted), or it grew past the limits."""
        if not self.measurable or self.admitted or not self.ran:
            return None
        results = [r for _, r in self.ran]
        steps = engine_steps(engine, [p for p, _ in self.ran], [r.cached_prompt_tokens for r in results],
                             [r.completion_tokens for r in results])
        return results, end - self.start, steps


class AsyncLLMEngine:
    """Owns an ``LLMEngine`` on a background thread and serves callers on any thread or loop.

    >>> aengine = AsyncLLMEngine.from_model("models/tiny")        # doctest: +SKIP
    >>> outs = aengine.submit(["a", "b"], SamplingParams()).result()  # doctest: +SKIP
    >>> out = await aengine.generate("a", SamplingParams())           # doctest: +SKIP
    """

    def __init__(self, engine: Any, *, name: str = "llm-engine"):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, tuple[BatchHandle, int]] = {}  # touched by the engine thread only
        self._streams: dict[str, tuple[BatchStream, int]] = {}  # pending requests whose tokens are streamed
        self._ids = itertools.count()
        self._id_lock = threading.Lock()
        self._gate = threading.Lock()  # orders "closed/dead" against queue puts: nothing is queued after stop
        self._closed = False
        self._dead: BaseException | None = None
        self._counters = {"requests_submitted": 0, "requests_rejected": 0, "requests_aborted": 0,
                          "engine_errors": 0}
        self._period: _BusyPeriod | None = None  # the engine thread's; None while the engine is idle
        self._history = BatchHistory()  # written by the engine thread under _history_lock
        self._history_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, model: str, **engine_kwargs: Any) -> "AsyncLLMEngine":
        from engine_backend.engine import LLMEngine

        return cls(LLMEngine(model=model, **engine_kwargs))

    # --- read-only facts about the model (fixed after construction, safe from any thread) ---
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.config.vocab_size

    @property
    def prefix_block_size(self) -> int | None:
        """The prefix cache's block size; None when it is off."""
        return engine_block_size(self.engine)

    @property
    def max_num_seqs(self) -> int:
        return self.engine.scheduler.max_num_seqs

    @property
    def max_num_batched_tokens(self) -> int:
        return self.engine.scheduler.max_num_batched_tokens

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._closed and self._dead is None

    # --- submitting ----------------------------------------------------------------------
    def _new_id(self) -> str:
        with self._id_lock:
            return f"async-{next(self._ids)}"  # apart from the engine's own "req-N" ids

    def _check_open(self) -> None:
        if self._dead is not None:
            raise EngineClosedError(f"the engine thread died: {self._dead!r}") from self._dead
        if self._closed:
            raise EngineClosedError("the async engine is shut down")

    def _put(self, cmd: tuple) -> None:
        with self._gate:
            self._check_open()
            self._commands.put(cmd)

    def submit(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]) -> BatchHandle:
        """Queue an ordered batch (thread-safe, returns at once).

        A prompt the engine rejects (empty, over the context, ...) yields an output with
        ``finish_reason="error"`` and ``.error``; the others run normally.
        """
        return self._queue(prompts, params, BatchHandle)

    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]) -> BatchStream:
        """Queue an ordered batch whose tokens are reported as they come (call on a running asyncio loop)."""
        loop = asyncio.get_running_loop()
        return self._queue(prompts, params, lambda owner, ids: BatchStream(owner, ids, loop))

    def _queue(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               make_handle: Callable[["AsyncLLMEngine", list[str]], BatchHandle]) -> Any:
        self._check_open()
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt given bare, as LLMEngine.generate allows
        prompts = list(prompts)
        params_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        handle = make_handle(self, [self._new_id() for _ in prompts])
        if prompts:
            self._put(("add", handle, prompts, params_list))
        return handle

    async def generate_batch(self, prompts: Sequence[Prompt],
                             params: SamplingParams | Sequence[SamplingParams]) -> list[Any]:
        return await self.submit(prompts, params).wait()

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Any:
        """One request; a prompt the engine rejects raises ``ValueError`` with its reason."""
        (out,) = await self.submit([prompt], params).wait()
        if out.finish_reason == "error":
            raise ValueError(out.error)
        return out

    def generate_sync(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
                      timeout: float | None = None) -> list[Any]:
        """Blocking batch API for plain threads."""
        return self.submit(prompts, params).result(timeout)

    def abort(self, request_id: str) -> None:
        """Free a request's pages; a caller still waiting gets ``finish_reason="abort"``."""
        try:
            self._put(("abort", request_id))
        except EngineClosedError:  # shutting down fails every request anyway
            pass

    # --- stats and shutdown ----------------------------------------------------------------
    def call(self, fn: Callable[[Any], Any], timeout: float | None = 30.0) -> Any:
        """Run ``fn(engine)`` on the engine thread between steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn(self.engine)
        box: dict[str, Any] = {}
        done = threading.Event()
        self._put(("call", fn, box, done))
        if not done.wait(timeout):
            raise TimeoutError(f"engine thread did not answer within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def stats(self, timeout: float | None = 30.0) -> dict:
        """The engine's ``stats()`` (read on its own thread) plus this wrapper's counters."""
        stats = dict(self.call(lambda eng: eng.stats(), timeout))
        stats.update(self._counters)
        return stats

    async def stats_async(self) -> dict:
        return await asyncio.get_running_loop().run_in_executor(None, self.stats)

    def history(self) -> BatchHistory:
        """A copy of the busy periods' history (see the module's doc), safe to read from any thread."""
        with self._history_lock:
            return BatchHistory.from_json(self._history.to_json(), size=self._history.batches.maxlen)

    def cached_prefix_blocks(self, token_lists: Sequence[Sequence[int]], timeout: float | None = 30.0) -> list[int]:
        """Per prompt (token ids), the leading full blocks the prefix cache could serve now
        (``engine_cached_prefix_blocks``), looked up on the engine thread between steps; nothing is allocated."""
        return self.call(lambda eng: engine_cached_prefix_blocks(eng, token_lists), timeout)

    async def cached_prefix_blocks_async(self, token_lists: Sequence[Sequence[int]],
                                         timeout: float | None = 30.0) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.cached_prefix_blocks(token_lists, timeout))

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop the thread; requests still pending fail with ``EngineClosedError``."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            if self._dead is None:
                self._commands.put(("stop",))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    close = shutdown

    def __enter__(self) -> "AsyncLLMEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # --- the engine thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                # Block only when idle; while requests run, take whatever arrived and step.
                busy = self.engine.has_unfinished_requests()
                if not busy and self._pending:  # the engine lost requests: never leave callers hanging
                    self._fail_all(EngineError("the engine dropped requests without finishing them"), abort=False)
                if not busy and self._period is not None:  # a busy period ended by aborts (steps close the others)
                    self._close_period()
                try:
                    cmd = self._commands.get() if not busy else self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
                while cmd is not None:
                    if cmd[0] == "stop":
                        self._fail_all(EngineClosedError("the async engine was shut down"), abort=True)
                        return
                    self._handle(cmd)
                    try:
                        cmd = self._commands.get_nowait()
                    except queue.Empty:
                        cmd = None
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as exc:  # a bug in this loop: report it to everyone, never hang them
            with self._gate:
                self._dead = exc
            log.error("engine thread died:\n%s", traceback.format_exc())
            self._fail_all(EngineClosedError(f"the engine thread died: {exc!r}"), abort=False)
            self._drain_after_death()

    def _handle(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "add":
            _, handle, prompts, params_list = cmd
            start = time.perf_counter()  # a period this batch opens counts its admission (tokenising) too
            for i, (rid, prompt, params) in enumerate(zip(handle.request_ids, prompts, params_list)):
                self._counters["requests_submitted"] += 1
                try:
                    self.engine.add_request(prompt, params, request_id=rid)
                except (ValueError, TypeError) as exc:  # the request's own fault: tell just this one
                    self._counters["requests_rejected"] += 1
                    handle._set(i, _output(rid, "error", str(exc)))
                except Exception as exc:  # the engine's fault: fail the batch, keep serving others
                    self._counters["engine_errors"] += 1
                    log.error("add_request failed:\n%s", traceback.format_exc())
                    for j in range(i):
                        self._abort_pending(handle.request_ids[j])
                    err = EngineError(f"engine failed to add a request: {exc!r}")
                    err.__cause__ = exc
                    handle._fail(err)
                    return
                else:
                    self._pending[rid] = (handle, i)
                    if isinstance(handle, BatchStream):
                        self._streams[rid] = (handle, i)
                    if self._period is None:
                        self._period = _BusyPeriod(start)
                    self._period.admit(rid, params)
        elif kind == "abort":
            self._abort_pending(cmd[1])
        elif kind == "call":
            _, fn, box, done = cmd
            try:
                box["value"] = fn(self.engine)
            except Exception as exc:  # the caller sees it; the engine goes on
                box["error"] = exc
            done.set()

    def _abort_pending(self, rid: str) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:  # finished, rejected or aborted already
            return
        try:
            self.engine.abort_request(rid)
        except Exception:  # the caller stopped waiting anyway; keep the loop alive
            log.error("abort of %s failed:\n%s", rid, traceback.format_exc())
        self._counters["requests_aborted"] += 1
        entry[0]._set(entry[1], _output(rid, "abort"))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # Tell every waiting caller why, free what we can, and keep serving new requests.
            self._counters["engine_errors"] += 1
            log.error("engine step failed:\n%s", traceback.format_exc())
            err = EngineError(f"engine step failed: {exc!r}")
            err.__cause__ = exc
            self._fail_all(err, abort=True)
            return
        if self._period is not None and outputs:
            finished = [f for f in map(self._period.finish, outputs) if f is not None]
            with self._history_lock:
                for params, result in finished:
                    self._history.count_generated(params, result)
            if not self.engine.has_unfinished_requests():  # recorded before its callers hear: they may read history()
                self._close_period()
        for out in outputs:
            entry = self._pending.pop(out.request_id, None)
            if entry is not None:
                entry[0]._set(entry[1], out)
        self._report_progress()

    def _close_period(self) -> None:
        period, self._period = self._period, None
        record = period.measured(self.engine, time.perf_counter())
        if record is not None:
            results, seconds, steps = record
            with self._history_lock:
                self._history.add(results, seconds, steps=steps)

    def _report_progress(self) -> None:
        """Hand each streamed request's new tokens to its caller; forget the ones no longer pending."""
        for rid, (stream, i) in list(self._streams.items()):
            part = self.engine.partial_output(rid, stream.num_sent[i]) if rid in self._pending else None
            if part is None:
                del self._streams[rid]
            elif part[0]:
                stream._progress(i, *part)

    def _fail_all(self, error: BaseException, abort: bool) -> None:
        self._period = None  # its requests did not all finish: not a measurement
        pending, self._pending = self._pending, {}
        for rid, (handle, _) in pending.items():
            if abort:
                try:
                    self.engine.abort_request(rid)
                except Exception:  # already failing: the callers hear about the first error
                    log.debug("abort of %s failed", rid, exc_info=True)
            handle._fail(error)

    def _drain_after_death(self) -> None:
        """Fail batches queued before callers noticed the thread died."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                cmd[1]._fail(EngineClosedError(f"the engine thread died: {self._dead!r}"))
            elif cmd[0] == "call":
                cmd[2]["error"] = EngineClosedError(f"the engine thread died: {self._dead!r}")
                cmd[3].set()
