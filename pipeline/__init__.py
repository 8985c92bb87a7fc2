"""Batch materialization of model predictions into versioned tables behind an atomic pointer.

The public API: load a job file, open its database, run it, move the pointer. Each name is imported
when first used, so that ``pipeline --help`` or a rollback does not load pandas and the models' libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Where each public name lives.
_API = {
    "PipelineError": "pipeline.errors", "Job": "pipeline.jobspec", "load_job": "pipeline.jobs",
    "make_engine": "pipeline.database.engines", "audit_version": "pipeline.run.audits",
    "RunResult": "pipeline.run.materialize", "run_job": "pipeline.run.materialize",
    "FlipResult": "pipeline.serve.pointer", "activate": "pipeline.serve.pointer", "rollback": "pipeline.serve.pointer",
    "gc": "pipeline.serve.retention", "reap": "pipeline.serve.retention",
}

__all__ = ["FlipResult", "Job", "PipelineError", "RunResult", "activate", "audit_version", "gc", "load_job",
           "make_engine", "reap", "rollback", "run_job", "__version__"]

if TYPE_CHECKING:
    from pipeline.database.engines import make_engine
    from pipeline.errors import PipelineError
    from pipeline.jobs import load_job
    from pipeline.jobspec import Job
    from pipeline.run.audits import audit_version
    from pipeline.run.materialize import RunResult, run_job
    from pipeline.serve.pointer import FlipResult, activate, rollback
    from pipeline.serve.retention import gc, reap


def __getattr__(name: str) -> Any:  # PEP 562: the module's attributes, imported on first use
    if name not in _API:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
