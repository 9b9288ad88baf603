"""Pie's copies between the tiers, scheduled so that they hide behind the forward pass.

A step has two kinds of copies:

- **Swaps** (from the coordinator's ``take_copies``): device-to-host copies (swap-outs, prefix-cache
  spills) run first and whole, in the order they were recorded, because the pages they read may be
  handed to other requests (of any layer type) in this very step; host-to-device copies (resumes,
  host-tier prefix hits) then run layer by layer in the model's layer order.
- **Streaming** (Pie's memory expansion): requests that run from the host tier have each layer's
  pages gathered into a small device staging buffer just before that layer, ``depth`` layers of a
  type ahead (one buffer per layer in flight, reused round-robin). When a layer is done, the pages
  it wrote (the step's new tokens) go back to the host and the next layer's gather reuses the buffer.

The attention of layer ``l`` waits only for layer ``l``'s copies, so while the model computes layer
``l`` the copier is already bringing in the next ones. On CUDA the copies run on their own stream,
ordered against the compute stream by events (no global synchronisation), from pinned host memory.
On CPU the same schedule runs on a copy thread, one ``threading.Event`` per layer.

Each wait records whether the layer's copies had already finished when the layer needed them: that
share is ``hidden_fraction`` (Pie's "performance transparency"); the streamed layers' share of the
last step drives the adaptive expansion (``KVCacheManager.adapt_stream_share``), and the measured
bandwidth feeds the scheduler's swap-or-recompute choice.
"""
from __future__ import annotations

import queue
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch

from .spec import KVSpec
from .storage import PagedKVStorage, StagingBuffers


@dataclass
class StreamPlan:
    """The host pages streamed this step, per type: staging slot ``j`` holds host page ``pages[j]``;
    ``written`` are the slots whose pages the step writes (to go back to the host after each layer)."""

    pages: dict[str, list[int]] = field(default_factory=dict)
    written: dict[str, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.pages.values())


class StepCopies:
    """One step's copies in flight."""

    def __init__(self, copier: "KVCopier", plan: StreamPlan):
        self.copier = copier
        self.plan = plan
        self.swap_ready: dict[int, object] = {}  # layer -> its swap-ins are done
        self.stage_ready: dict[int, object] = {}  # streamed layer -> its gather is done
        self.swapped_layers: set[int] = set()
        self.stream_waits = 0
        self.stream_hidden = 0
        self.cuda_swap = None  # (start, end) timing events of the swap copies on CUDA
        self.swap_bytes = 0
        self.error: BaseException | None = None

    def wait(self, layer: int) -> None:
        """Block (CPU) or order the compute stream (CUDA) until ``layer``'s copies are in."""
        c = self.copier
        swap, stage = self.swap_ready.get(layer), self.stage_ready.get(layer)
        if swap is not None:
            if layer in self.swapped_layers:
                c.note_wait(c.is_done(swap))
            c.block_on(swap)
        if stage is not None:
            done = c.is_done(stage)
            c.note_wait(done)
            self.stream_waits += 1
            self.stream_hidden += done
            c.block_on(stage)
        if self.error is not None:
            raise RuntimeError("copying KV pages between tiers failed") from self.error

    def layer_done(self, layer: int) -> None:
        """The model is past ``layer``: its written pages go back to the host, the next gather may reuse
        its staging buffer."""
        if layer in self.stage_ready:
            self.copier.after_layer(self, layer)

    @property
    def stream_hidden_fraction(self) -> float | None:
        return self.stream_hidden / self.stream_waits if self.stream_waits else None

    def finish(self) -> None:
        """Wait for every copy of the step, then account for its time."""
        self.copier.finish(self)
        if self.error is not None:
            raise RuntimeError("copying KV pages between tiers failed") from self.error


class KVCopier:
    def __init__(self, specs: list[KVSpec], device_storage: PagedKVStorage, host_storage: PagedKVStorage,
                 staging: StagingBuffers, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.spec_of = {s.name: s for s in specs}
        self.layer_slot = {layer: (s.name, i) for s in specs for i, layer in enumerate(s.layers)}
        self.layers = sorted(self.layer_slot)
        self.dev = device_storage.type_pages
        self.host = host_storage.type_pages
        self.staging = staging
        self.seconds = 0.0
        self.waits = 0
        self.hidden_waits = 0
        self.bandwidth: float | None = None  # bytes per second of swap copies, smoothed
        if self.cuda:
            self.stream = torch.cuda.Stream(self.device)
        else:
            jobs = self._jobs = queue.Queue()
            threading.Thread(target=_copy_worker, args=(jobs,), name="kv-copier", daemon=True).start()
            weakref.finalize(self, jobs.put, None)  # the thread holds no reference to us: it ends when we go

    # ---- accounting --------------------------------------------------------------------
    def note_wait(self, hidden: bool) -> None:
        self.waits += 1
        self.hidden_waits += bool(hidden)

    def _note_swap(self, num_bytes: int, seconds: float) -> None:
        if num_bytes and seconds > 0:
            rate = num_bytes / seconds
            self.bandwidth = rate if self.bandwidth is None else 0.7 * self.bandwidth + 0.3 * rate

    def is_done(self, ready) -> bool:
        return bool(ready.query() if self.cuda else ready.is_set())

    def block_on(self, ready) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(ready)
        else:
            ready.wait()

    @property
    def hidden_fraction(self) -> float:
        return self.hidden_waits / self.waits if self.waits else 1.0

    # ---- one step ----------------------------------------------------------------------
    def start(self, outs: list[tuple[str, int, int]], ins: list[tuple[str, int, int]],
              plan: StreamPlan | None = None) -> StepCopies:
        """Start the copies: ``outs`` (type, device page, host page), ``ins`` (type, host page, device page),
        and the first ``depth`` gathers of each streamed type."""
        plan = plan or StreamPlan()
        step = StepCopies(self, plan)
        runs = _runs_by_type(outs)
        into: dict[str, tuple[list[int], list[int]]] = {}
        for name, h, d in ins:
            hs, ds = into.setdefault(name, ([], []))
            hs.append(h)
            ds.append(d)
        step.swap_bytes = sum(self.spec_of[n].page_bytes for n, _, _ in outs + ins)
        step.swapped_layers = {layer for layer, (name, _) in self.layer_slot.items() if name in into}
        streamed = [layer for layer in self.layers if plan.pages.get(self.layer_slot[layer][0])]
        if self.cuda:
            step.swap_ready = {layer: torch.cuda.Event() for layer in self.layers}
            step.stage_ready = {layer: torch.cuda.Event() for layer in streamed}
            self._cuda_swaps(step, runs, into)
        else:
            step.swap_ready = {layer: threading.Event() for layer in self.layers}
            step.stage_ready = {layer: threading.Event() for layer in streamed}
            self._jobs.put((step, self._cpu_swaps, (step, runs, into)))
        for layer in streamed:
            name, i = self.layer_slot[layer]
            if i < self.staging.depth:
                self._gather(step, layer)
        return step

    def after_layer(self, step: StepCopies, layer: int) -> None:
        name, i = self.layer_slot[layer]
        following = self.spec_of[name].layers[i + self.staging.depth:i + self.staging.depth + 1]
        if self.cuda:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            self.stream.wait_event(ev)
            with torch.cuda.stream(self.stream):
                self._write_back(step, layer)
        else:
            self._jobs.put((step, self._write_back, (step, layer)))
        if following:
            self._gather(step, following[0])

    def finish(self, step: StepCopies) -> None:
        if self.cuda:
            self.stream.synchronize()
            if step.cuda_swap is not None:
                seconds = step.cuda_swap[0].elapsed_time(step.cuda_swap[1]) / 1000
                self.seconds += seconds
                self._note_swap(step.swap_bytes, seconds)
        else:
            done = threading.Event()
            self._jobs.put((step, done.set, ()))
            done.wait()

    # ---- the copies themselves ------------------------------------------------------------
    def _gather(self, step: StepCopies, layer: int) -> None:
        name, i = self.layer_slot[layer]
        pages = step.plan.pages[name]
        buf = self.staging.layer_buffer[layer]
        if self.cuda:
            with torch.cuda.stream(self.stream):
                for j, h in enumerate(pages):
                    buf[j].copy_(self.host[name][h, i], non_blocking=True)
                step.stage_ready[layer].record()
        else:
            def job():
                idx = torch.tensor(pages, dtype=torch.long)
                torch.index_select(self.host[name][:, i], 0, idx, out=buf[:len(pages)])
                step.stage_ready[layer].set()
            self._jobs.put((step, self._timed, (job,)))

    def _write_back(self, step: StepCopies, layer: int) -> None:
        name, i = self.layer_slot[layer]
        pages, buf = step.plan.pages[name], self.staging.layer_buffer[layer]
        if self.cuda:
            for j in step.plan.written.get(name, []):
                self.host[name][pages[j], i].copy_(buf[j], non_blocking=True)
            return
        written = step.plan.written.get(name, [])
        if written:
            slots = torch.tensor(written, dtype=torch.long)
            self._timed(lambda: self.host[name][:, i].index_copy_(
                0, torch.tensor([pages[j] for j in written], dtype=torch.long), buf.index_select(0, slots)))

    def _cuda_swaps(self, step: StepCopies, runs, into) -> None:
        stream, compute = self.stream, torch.cuda.current_stream(self.device)
        stream.wait_stream(compute)  # the pages copied out were written by earlier steps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record()
            for name, pairs in runs:
                dev, host = self.dev[name], self.host[name]
                for d, h in pairs:
                    host[h].copy_(dev[d], non_blocking=True)
            for layer in self.layers:
                name, i = self.layer_slot[layer]
                if name in into:
                    dev, host = self.dev[name], self.host[name]
                    for h, d in zip(*into[name]):
                        dev[d, i].copy_(host[h, i], non_blocking=True)
                step.swap_ready[layer].record()
            end.record()
        if step.swap_bytes:
            step.cuda_swap = (start, end)

    def _cpu_swaps(self, step: StepCopies, runs, into) -> None:
        t0 = time.perf_counter()
        for name, pairs in runs:
            d_idx = torch.tensor([d for d, _ in pairs], dtype=torch.long)
            h_idx = torch.tensor([h for _, h in pairs], dtype=torch.long)
            self.host[name].index_copy_(0, h_idx, self.dev[name].index_select(0, d_idx))
        index = {name: (torch.tensor(hs, dtype=torch.long), torch.tensor(ds, dtype=torch.long))
                 for name, (hs, ds) in into.items()}
        for layer in self.layers:
            name, i = self.layer_slot[layer]
            if name in index:
                h_idx, d_idx = index[name]
                self.dev[name][:, i].index_copy_(0, d_idx, self.host[name][:, i].index_select(0, h_idx))
            step.swap_ready[layer].set()
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        if step.swap_bytes:
            self._note_swap(step.swap_bytes, seconds)

    def _timed(self, job) -> None:
        t0 = time.perf_counter()
        job()
        self.seconds += time.perf_counter() - t0


def _copy_worker(jobs: queue.Queue) -> None:
    """The CPU copy thread: runs ``(step, function, args)`` jobs in order until it gets None."""
    # One thread, no OpenMP team of its own: a second team's spin-waiting workers took the compute's cores
    # (every layer ran ~1.5x slower on 2 cores); the copies are memory-bound and gain little from threads.
    torch.set_num_threads(1)
    while (job := jobs.get()) is not None:
        step, fn, args = job
        try:
            fn(*args)
        except BaseException as e:  # the step hears it in wait()/finish(); the copier stays alive
            step.error = e
            for ev in list(step.swap_ready.values()) + list(step.stage_ready.values()):
                ev.set()
        del job, step, fn, args  # hold nothing between jobs, so a finished engine can be collected


def _runs_by_type(outs):
    """Consecutive copies of one type, in recorded order, as ``(type, [(device page, host page)])``.

    A later copy to the same host memory wins: across runs by their order (a host large page can change
    type within a step), within a run by keeping only the last copy to each host page, because
    ``index_copy_`` leaves the winner of duplicate indices undefined."""
    runs: list[tuple[str, dict[int, int]]] = []  # host page -> device page, per run
    for name, d, h in outs:
        if not runs or runs[-1][0] != name:
            runs.append((name, {}))
        runs[-1][1].pop(h, None)
        runs[-1][1][h] = d
    return [(name, [(d, h) for h, d in dests.items()]) for name, dests in runs]
