"""The exceptions the pipeline raises on purpose.

Every error a user can cause derives from :class:`PipelineError`; the CLI prints
its message as one line and exits non-zero. Anything else is a bug.
"""

from __future__ import annotations

import logging
import re
from typing import Iterator

#: A password in a URL (``scheme://user:PASSWORD@host``, as SQLAlchemy splits it: up to the next ``@``, spaces
#: included, which SQLAlchemy renders as they are, in the user's name too; never into another URL) or a
#: ``password=`` parameter (a URL's query string, a libpq connection string with its ``\'`` escapes).
_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*(?: [^\s:/?#@]+)*:)(?:(?!://)[^@\r\n])+(?=@)"
                       r"|(\bpassword=)(?:'(?:[^'\\]|\\.)*'|[^\s&;'\"]+)", re.IGNORECASE)
MASK = "***"


def hide_passwords(text: str) -> str:
    """``text`` with every password in a database (or webhook) URL masked: messages quote URLs and what drivers
    said, and end up in terminals, log files, the run history and notifications."""
    return _PASSWORD.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text)


def first_line(exc: BaseException) -> str:
    """The first line of what a driver said (the part a person needs), for one-line errors; passwords masked."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return hide_passwords(lines[0]) if lines else type(orig).__name__


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def hide_in_traceback(exc: BaseException) -> None:
    """Mask passwords in the messages of ``exc`` and of the exceptions it was raised from, in place, so that
    the traceback ``--debug`` prints holds none."""
    for current in chain(exc):
        current.args = tuple(hide_passwords(a) if isinstance(a, str) else a for a in current.args)


class HidePasswords(logging.Filter):
    """Mask passwords in a log record's message, exception and stack text, whichever library logged it.

    On a handler it covers every record the handler writes; on a logger, the records logged through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it, as it would without this filter
            return True
        masked = hide_passwords(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text rather than format it again
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = hide_passwords(record.exc_text)
        if record.stack_info:
            record.stack_info = hide_passwords(record.stack_info)
        return True


#: What the pipeline logs is masked for library callers too, whatever handlers their application installs.
logging.getLogger("pipeline").addFilter(HidePasswords())


class PipelineError(Exception):
    """Base of every expected failure; its message is one line meant for a person. Passwords in it are masked
    when it is made, so that it is safe wherever it goes: the terminal, a log, the run history, a webhook."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(hide_passwords(a) if isinstance(a, str) else a for a in args))


class JobFileError(PipelineError):
    """A job file is missing, malformed or names something that does not exist."""


class SourceError(PipelineError):
    """The domain could not be listed: a failing query, a bad file, an empty result."""


class ModelError(PipelineError):
    """The model could not be loaded or did not score the domain as promised."""


class GateError(PipelineError):
    """An upstream gate held: the inputs were not there in time, or differ too much from the active version's."""


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


class LockLost(DatabaseError):
    """A run's lock went with its database connection (a server restart, a network cut): the run stops before
    publishing, and may try again once it holds the lock anew."""


class JobLocked(PipelineError):
    """Another run of the same job holds its lock."""
