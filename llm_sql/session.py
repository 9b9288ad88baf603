"""DuckDB mode's per-connection state: the models' backends, the settings, the result cache and the statistics
of the last query.

``Session`` is built by ``llm_sql.register`` from a ``llm_sql.config.Config`` (validated there, so a typo is
a clear error before anything heavy happens). Each model's backend is created on first use, except that a
model directory that does not exist and an OpenAI-compatible server that does not answer are reported at
``register``.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_sql.config import ModelSpec, make_config
from udf.api import StageStats
from udf.arrow_calls import Target


@dataclass
class QueryStats:
    """What the last query cost: sums over its stages (and fallback UDF chunks), plus per-stage detail."""

    rows_in: int = 0
    distinct_inputs: int = 0
    llm_calls: int = 0  # requests sent to the backend after dedup and the result cache
    cache_hits: int = 0  # answered by the persistent result cache
    null_inputs: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    solve_seconds: float = 0.0
    llm_seconds: float = 0.0
    total_seconds: float = 0.0
    # rows answered per model (cascades: udf.routing); a lifted stage counts its distinct inputs, as llm_calls does
    rows_by_model: dict[str, int] = field(default_factory=dict)
    rows_reasoned: int = 0  # rows answered with reasoning on
    reasoning_tokens: int = 0
    generated_tokens_saved: float = 0.0  # against asking every row the router's / cascade's last way
    llm_seconds_saved: float = 0.0
    optimized: bool = True
    fallback_reason: str | None = None  # why the whole query ran through the fallback UDFs, if it did
    stages: list[dict[str, Any]] = field(default_factory=list)  # one per lifted stage
    fallback_chunks: int = 0  # chunks answered by the fallback UDFs
    error_reasons: list[str] = field(default_factory=list)  # the first few per-row failure reasons

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def add(self, s: StageStats) -> None:
        for name in ("rows_in", "distinct_inputs", "llm_calls", "cache_hits", "null_inputs", "errors",
                     "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "rows_reasoned", "reasoning_tokens"):
            setattr(self, name, getattr(self, name) + int(getattr(s, name)))
        for name in ("solve_seconds", "llm_seconds", "generated_tokens_saved", "llm_seconds_saved"):
            setattr(self, name, getattr(self, name) + float(getattr(s, name)))
        for model, rows in s.rows_by_model.items():
            self.rows_by_model[model] = self.rows_by_model.get(model, 0) + rows

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefix_hit_rate"] = self.prefix_hit_rate
        return d

    def __getitem__(self, key: str) -> Any:  # stats["llm_calls"] as well as stats.llm_calls
        return self.as_dict()[key]

    def summary(self) -> str:
        lines = [f"rows in             {self.rows_in}",
                 f"distinct inputs     {self.distinct_inputs}",
                 f"LLM calls           {self.llm_calls}",
                 f"result-cache hits   {self.cache_hits}",
                 f"errors              {self.errors}",
                 f"prompt tokens       {self.prompt_tokens}",
                 f"cached prompt tok.  {self.cached_prompt_tokens}",
                 f"prefix hit rate     {self.prefix_hit_rate:.1%}",
                 f"generated tokens    {self.generated_tokens}",
                 f"solve seconds       {self.solve_seconds:.3f}",
                 f"LLM seconds         {self.llm_seconds:.3f}",
                 f"total seconds       {self.total_seconds:.3f}"]
        if len(self.rows_by_model) > 1 or self.rows_reasoned:
            lines.append("rows by model       " + ", ".join(f"{m}: {n}" for m, n in self.rows_by_model.items()))
            lines.append(f"reasoning tokens    {self.reasoning_tokens}")
            lines.append(f"tokens saved        {self.generated_tokens_saved:.0f} (vs. every row the costliest way)")
        if self.fallback_reason:
            lines.append(f"fallback            {self.fallback_reason}")
        return "\n".join(lines)


class Session:
    def __init__(self, **options: Any):
        """``register``'s options (``llm_sql.config.make_config``); a ``Backend`` instance as ``backend=`` is used as
        the one model (and not closed by the session)."""
        backend = options.get("backend", "embedded")
        instance = None if isinstance(backend, str) else backend
        self.config = make_config(**options)
        self._lock = threading.Lock()
        self._backends: dict[str, Any] = {}
        self._borrowed: set[str] = set()  # a Backend passed in is the caller's to close
        if instance is not None:
            self._backends[self.config.default_model] = instance
            self._borrowed.add(self.config.default_model)
        for spec in self.config.models:
            if spec.backend == "openai":
                self._ping(spec)
        self.result_cache = self.config.result_cache()
        self.last = QueryStats(optimized=self.optimize)
        self.current: QueryStats | None = None
        self.query_counter = 0

    # what the connection wrapper reads, straight from the configuration
    optimize = property(lambda self: self.config.optimize)
    settings = property(lambda self: self.config.settings)
    udf_settings = property(lambda self: self.config.udf_settings)
    defaults = property(lambda self: self.config.defaults)

    def _ping(self, spec: ModelSpec) -> None:
        """Fail at register time, naming the URL, when the server does not answer."""
        from engine_backend.backends import BackendError

        backend = self.backend_of(spec.name)
        try:
            backend._model()  # lists the models: one cheap request
        except BackendError:
            raise
        except Exception as exc:  # pragma: no cover - anything else the client raises
            raise BackendError(f"OpenAI-compatible server at {spec.base_url} is not usable: {exc}") from None

    def backend_of(self, name: str | None = None):
        """The backend of a model name (None = the default), created on first use."""
        spec = self.config.model(name)
        with self._lock:
            backend = self._backends.get(spec.name)
            if backend is None:
                from engine_backend.backends import make_backend

                backend = self._backends[spec.name] = make_backend(spec.backend, **spec.backend_kwargs())
            return backend

    @property
    def backend(self):  # the default model's
        return self.backend_of(None)

    def route(self, model: str | None = None) -> Target:
        """Where a call naming ``model`` runs, and the identity its answers are cached under."""
        spec = self.config.model(model)
        return Target(self.backend_of(spec.name), spec.identity, model=spec.name)

    def on_output(self, call, out, target=None) -> None:  # fallback UDF chunks
        stats = self.current or self.last
        stats.add(out.stats)
        stats.fallback_chunks += 1
        for e in out.errors:
            if e is not None and len(stats.error_reasons) < 20:
                stats.error_reasons.append(e)

    def close(self) -> None:
        with self._lock:
            for name, backend in self._backends.items():
                if name not in self._borrowed:
                    backend.close()
            self._backends = {}
