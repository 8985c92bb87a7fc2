"""The exceptions the pipeline raises on purpose.

Every error a user can cause derives from :class:`PipelineError`; the CLI prints
its message as one line and exits non-zero. Anything else is a bug.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of what a driver said (the part a person needs), for one-line errors."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


class PipelineError(Exception):
    """Base of every expected failure; its message is one line meant for a person."""


class JobFileError(PipelineError):
    """A job file is missing, malformed or names something that does not exist."""


class SourceError(PipelineError):
    """The domain could not be listed: a failing query, a bad file, an empty result."""


class ModelError(PipelineError):
    """The model could not be loaded or did not score the domain as promised."""


class AuditError(PipelineError):
    """A freshly written version failed a check that guards the flip."""


class TableError(PipelineError):
    """A prediction table, a version or an alias named by the caller is unknown or cannot be used as asked (not
    ready, already active, gone, differently keyed); the pointer and the views are left as they were."""


class ViewBusy(TableError):
    """Readers kept a view (or a table) busy through every try of the DDL that needed it."""


class PublishPending(PipelineError):
    """A version passed its audits and is ready, but readers kept its view busy past the job's
    ``publish_timeout``; ``pipeline activate`` publishes it later."""


class DatabaseError(PipelineError):
    """The database refused or dropped a statement (unreachable, read-only, full)."""


class JobLocked(PipelineError):
    """Another run of the same job holds its lock."""
