"""Pie's copies between the tiers, performed so that they hide behind the forward pass.

A step's copies come from the coordinator (``KVCacheManager.take_copies``). Copies to the host
(swap-outs and prefix-cache spills) run first and whole, in the order they were recorded: the
pages they read may be handed to other requests (of any layer type: a large page can change
type within a step) in this very step. Copies back to the device then run layer by layer in the
model's layer order, and the attention of layer ``l`` waits only for layer ``l``'s copies, so
while the model computes layer ``l`` the copier is already bringing in layer ``l + 1``.

On CUDA the copies run on their own stream and the compute stream waits on per-layer events (no
global synchronisation); the host tier is pinned so the copies are asynchronous. On CPU the same
schedule runs on a copy thread with one ``threading.Event`` per layer.

Each wait records whether the layer's copies had already finished when the layer needed them;
``hidden_fraction`` is the share that had (Pie's "performance transparency"), and the measured
bandwidth feeds the scheduler's swap-or-recompute choice.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from .spec import KVSpec
from .storage import PagedKVStorage


class StepCopies:
    """One step's copies in flight."""

    def __init__(self, copier: "KVCopier", num_bytes: int, layers_with_copies: set[int]):
        self.copier = copier
        self.num_bytes = num_bytes
        self.layers_with_copies = layers_with_copies
        self.events: dict[int, object] = {}
        self.done = threading.Event()
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.cuda_start = self.cuda_end = None

    def wait(self, layer: int) -> None:
        """Block (CPU) or order the compute stream (CUDA) until ``layer``'s copies are in."""
        ev = self.events[layer]
        counted = layer in self.layers_with_copies
        if self.copier.cuda:
            if counted:
                self.copier.note_wait(ev.query())
            torch.cuda.current_stream(self.copier.device).wait_event(ev)
        else:
            if counted:
                self.copier.note_wait(ev.is_set())
            ev.wait()
            if self.error is not None:
                raise RuntimeError("copying KV pages between tiers failed") from self.error

    def finish(self) -> None:
        """Wait for every copy of the step, then account for its time."""
        if self.copier.cuda:
            self.copier.stream.synchronize()
            self.seconds = self.cuda_start.elapsed_time(self.cuda_end) / 1000
        else:
            self.done.wait()
            if self.error is not None:
                raise RuntimeError("copying KV pages between tiers failed") from self.error
        self.copier.note_done(self.num_bytes, self.seconds)


class KVCopier:
    def __init__(self, specs: list[KVSpec], device_storage: PagedKVStorage, host_storage: PagedKVStorage, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.spec_of = {s.name: s for s in specs}
        self.layer_slot = {layer: (s.name, i) for s in specs for i, layer in enumerate(s.layers)}
        self.layers = sorted(self.layer_slot)
        self.dev = device_storage.type_pages
        self.host = host_storage.type_pages
        self.bytes_copied = 0
        self.seconds = 0.0
        self.waits = 0
        self.hidden_waits = 0
        self.bandwidth: float | None = None  # bytes per second, smoothed
        if self.cuda:
            self.stream = torch.cuda.Stream(self.device)
        else:
            self._jobs: queue.Queue = queue.Queue()
            threading.Thread(target=self._worker, name="kv-copier", daemon=True).start()

    # ---- accounting --------------------------------------------------------------------
    def note_wait(self, hidden: bool) -> None:
        self.waits += 1
        self.hidden_waits += bool(hidden)

    def note_done(self, num_bytes: int, seconds: float) -> None:
        self.bytes_copied += num_bytes
        self.seconds += seconds
        if num_bytes and seconds > 0:
            rate = num_bytes / seconds
            self.bandwidth = rate if self.bandwidth is None else 0.7 * self.bandwidth + 0.3 * rate

    @property
    def hidden_fraction(self) -> float:
        return self.hidden_waits / self.waits if self.waits else 1.0

    # ---- one step ----------------------------------------------------------------------
    def start(self, outs: list[tuple[str, int, int]], ins: list[tuple[str, int, int]]) -> StepCopies:
        """Start the copies: ``outs`` (type, device page, host page), ``ins`` (type, host page, device page)."""
        runs = _runs_by_type(outs)
        into: dict[str, tuple[list[int], list[int]]] = {}
        for name, h, d in ins:
            hs, ds = into.setdefault(name, ([], []))
            hs.append(h)
            ds.append(d)
        num_bytes = sum(self.spec_of[n].page_bytes for n, _, _ in outs + ins)
        layers = {layer for layer, (name, _) in self.layer_slot.items() if name in into}
        step = StepCopies(self, num_bytes, layers)
        if self.cuda:
            self._start_cuda(step, runs, into)
        else:
            step.events = {layer: threading.Event() for layer in self.layers}
            self._jobs.put((step, runs, into))
        return step

    def _start_cuda(self, step, runs, into) -> None:
        stream, compute = self.stream, torch.cuda.current_stream(self.device)
        stream.wait_stream(compute)  # the pages copied out were written by earlier steps
        step.cuda_start, step.cuda_end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        with torch.cuda.stream(stream):
            step.cuda_start.record()
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
                ev = torch.cuda.Event()
                ev.record()
                step.events[layer] = ev
            step.cuda_end.record()

    def _worker(self) -> None:
        while True:
            step, runs, into = self._jobs.get()
            t0 = time.perf_counter()
            try:
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
                    step.events[layer].set()
            except BaseException as e:  # the step hears it in wait()/finish(); the copier stays alive
                step.error = e
                for ev in step.events.values():
                    ev.set()
            step.seconds = time.perf_counter() - t0
            step.done.set()


def _runs_by_type(outs):
    """Consecutive copies of one type, in recorded order (a later copy to the same host memory wins)."""
    runs: list[tuple[str, list[tuple[int, int]]]] = []
    for name, d, h in outs:
        if runs and runs[-1][0] == name:
            runs[-1][1].append((d, h))
        else:
            runs.append((name, [(d, h)]))
    return runs
