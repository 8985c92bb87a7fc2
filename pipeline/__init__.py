"""Batch materialization of model predictions into versioned tables behind an atomic pointer.

The public API: load a job file, open its database, run it, move the pointer.
"""

from pipeline.database.engines import make_engine
from pipeline.errors import PipelineError
from pipeline.jobs import load_job
from pipeline.jobspec import Job
from pipeline.run.audits import audit_version
from pipeline.run.materialize import RunResult, run_job
from pipeline.serve.pointer import FlipResult, activate, rollback
from pipeline.serve.retention import gc, reap

__version__ = "0.1.0"

__all__ = ["FlipResult", "Job", "PipelineError", "RunResult", "activate", "audit_version", "gc", "load_job",
           "make_engine", "reap", "rollback", "run_job", "__version__"]
