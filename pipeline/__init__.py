"""Batch materialization of model predictions into versioned tables behind an atomic pointer.

The public API: load a job file, run it, move the pointer.
"""

from pipeline.errors import PipelineError
from pipeline.jobs import Job, load_job
from pipeline.materialize import RunResult, audit_version, run_job
from pipeline.pointer import FlipResult, activate, rollback
from pipeline.retention import gc, reap

__version__ = "0.1.0"

__all__ = ["FlipResult", "Job", "PipelineError", "RunResult", "activate", "audit_version", "gc", "load_job",
           "reap", "rollback", "run_job", "__version__"]
