"""Fixtures shared by the top-level tests."""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture()
def env_without_this_python(tmp_path):
    """The environment with this interpreter's directory taken off PATH and, first on it, a ``python3`` that
    fails, as IDEs and cron start Python: a Spark worker started from PATH instead of this interpreter fails."""
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir(exist_ok=True)
    for name in ("python3", "python"):
        (decoy / name).write_text("#!/bin/sh\necho 'decoy python3 from PATH started' >&2\nexit 3\n")
        (decoy / name).chmod(0o755)
    here = os.path.dirname(sys.executable)
    rest = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and os.path.abspath(d) != here]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(decoy), *rest])
    return env


@pytest.fixture()
def own_answers():
    """``own_answers(model_dir, rows, instruction=, names=, max_tokens=)``: what that checkpoint's own engine answers
    to ``llm``, evaluated plainly (no dedup, no reordering, no cache): the reference for a call routed to it."""
    def answers(model_dir, rows, instruction="Summarise", names=("review",), max_tokens=4):
        from engine_backend.backends import make_backend
        from udf.api import EvalSettings
        from udf.batch import evaluate
        from udf.functions import make_call

        backend = make_backend("embedded", model=model_dir)
        try:
            settings = EvalSettings(dedup=False, reorder=False, result_cache=False, progress=False,
                                    defaults={"max_tokens": max_tokens})
            return evaluate(make_call("llm", instruction=instruction, field_names=names), rows, backend,
                            settings=settings).values
        finally:
            backend.close()

    return answers
