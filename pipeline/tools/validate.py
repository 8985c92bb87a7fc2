"""``pipeline validate``: check a job as a run would before it scores anything, without writing.

The job file (TOML, names, the cron expression) is read; the model is loaded, its pin checked; the
columns that ``[output]`` and ``[audits]`` name must be among the model's outputs; the executor must
suit the database; and the domain's first chunk is read and scored, so a feature the domain lacks (or
a type the model refuses) is caught here. ``pipeline plan`` starts with the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd
from sqlalchemy.engine import Engine

from pipeline.database.dialects import dialect_for
from pipeline.errors import AuditError
from pipeline.jobspec import Job
from pipeline.run.domain import Domain
from pipeline.run.executors import EMPTY_DOMAIN, executor_for
from pipeline.run.materialize import check_roles, type_guard
from pipeline.run.model import Model, load_model
from pipeline.run.scoring import Scorer, check_output, first_rows
from pipeline.run.store import Kinds


@dataclass
class Checked:
    """What the checks found: the model, and the domain's first chunk as read and as scored (None: empty)."""

    model: Model
    scorer: Scorer
    chunk: pd.DataFrame | None
    rows: pd.DataFrame | None
    #: The domain's column kinds (see :meth:`Domain.kind`), for columns its first rows cannot type.
    kinds: Kinds

    def summary(self) -> str:
        """One line on what was checked, for ``pipeline validate``."""
        model = self.model
        read = f"{len(self.chunk)} domain rows read and scored" if self.chunk is not None else "the domain is empty"
        return (f"model {model.class_name} {model.method} (sha256 {model.sha256[:12]}); features "
                f"{', '.join(model.features)}; outputs {', '.join(model.outputs)}; {read}")


def check_job(job: Job, engine: Engine, logical_date: date) -> Checked:
    """Every check a run makes before it scores the whole domain.

    Raises:
        PipelineError: the first problem a run would hit (model, pin, outputs, executor, an empty domain a run
            refuses, scoring).
    """
    model = load_model(job.model)
    check_output(job, model)
    check_roles(engine, job)
    executor_for(job.executor).check(dialect_for(engine))
    scorer = Scorer(model, list(job.domain.keys), type_guard(engine, job), job.output.include)
    domain = Domain(job.domain, engine, logical_date)
    chunks = domain.chunks()
    try:
        chunk = next(chunks, None)
        rows = first_rows(scorer, job, chunk) if chunk is not None else None
    finally:
        chunks.close()
        domain.close()
    if chunk is None and not job.audits.allow_empty:
        raise AuditError(EMPTY_DOMAIN)
    return Checked(model, scorer, chunk, rows, domain.kind)
