"""Telling people how a run ended: the job's ``[notify]`` hooks for a failure, a success or a skip.

A hook is a shell command (handed the run's facts as ``PIPELINE_*`` environment variables and as JSON on
stdin) and/or a webhook (POSTed the facts as JSON, a Slack message or Alertmanager alerts). A hook that fails
is logged as a warning naming it, and nothing more: a notification never changes a run's outcome. The facts
never hold a database URL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.errors import JobLocked, PipelineError, first_line, hide_passwords
from pipeline.jobspec import Hook, Job
from pipeline.run.context import RunOptions, Tries

if TYPE_CHECKING:
    from pipeline.run.materialize import RunResult

log = logging.getLogger("pipeline")

COMMAND_TIMEOUT = 30.0
WEBHOOK_TIMEOUT = 10.0
#: How long an Alertmanager failure alert fires unless a later success or skip resolves it.
ALERT_FIRES_FOR = timedelta(hours=24)
ALERT_NAME = "PipelineRunFailed"
_EVENTS = {"failed": "on_failure", "succeeded": "on_success", "skipped": "on_skip"}


@dataclass(frozen=True)
class Outcome:
    """What hooks are told about a run: its facts, never a database URL or a password."""

    job: str
    table: str
    logical_date: str
    status: str  # succeeded, failed or skipped
    trigger: str
    seconds: float
    version: int | None = None
    previous_version: int | None = None
    activated: bool = False
    rows: int | None = None
    error: str | None = None  # one line, failures only
    skip_reason: str | None = None
    scheduled_for: str | None = None
    run_id: int | None = None  # the run's row in pipeline_runs, when it got one
    host: str = field(default_factory=socket.gethostname)

    @property
    def message(self) -> str:
        """One line for a person."""
        head = f"{self.job}: run for {self.logical_date}"
        if self.status == "failed":
            return f"{head} failed: {self.error}"
        if self.status == "skipped":
            return f"{head} skipped: {self.skip_reason}"
        served = f"active (was {self.previous_version or 'none'})" if self.activated else "ready, not active"
        return f"{head}: version {self.version} of {self.table}, {self.rows} rows in {self.seconds:.1f} s, {served}"

    def facts(self) -> dict[str, Any]:
        """The plain JSON payload: every field and the message."""
        return {**asdict(self), "message": self.message}

    def environment(self) -> dict[str, str]:
        """The facts as ``PIPELINE_<FIELD>`` variables (empty when unknown)."""
        return {f"PIPELINE_{k.upper()}": "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in self.facts().items()}


def notified(job: Job, logical_date: date, options: RunOptions, run: Callable[[], RunResult],
             tries: Tries | None = None) -> RunResult:
    """``run()``, then the job's hooks for how it ended; its result or error is passed on untouched. ``tries``
    (the run's, when the caller has it) names the run's record in a failure's facts.

    :class:`JobLocked` notifies nothing, nor does a skip because another process recorded the tick already:
    the run that has the table reports its own outcome (a standby scheduler would repeat it at every tick).
    """
    with failure_notified(job, logical_date, options, tries):
        result = run()
    outcome = ended(job, logical_date, options, result)
    if outcome is not None:
        notify(job, outcome)
    return result


def ended(job: Job, logical_date: date, options: RunOptions, result: RunResult) -> Outcome | None:
    """What hooks are told of a run that returned; None for a skip because another process recorded the tick."""
    if result.skipped and result.run_id is None:
        return None
    return Outcome(status="skipped" if result.skipped else "succeeded", seconds=round(result.seconds, 3),
                   version=result.version, previous_version=result.previous, activated=result.activated,
                   rows=result.rows, skip_reason=result.skipped, run_id=result.run_id,
                   **_facts(job, logical_date, options))


@contextlib.contextmanager
def failure_notified(job: Job, logical_date: date, options: RunOptions, tries: Tries | None = None) -> Iterator[None]:
    """The job's on_failure hooks for an error raised inside (but :class:`JobLocked`), which is passed on: also what
    keeps a scheduled tick that fails before its run starts (its database down) from going unheard."""
    started = time.monotonic()
    try:
        yield
    except JobLocked:
        raise
    except Exception as exc:
        notify(job, Outcome(status="failed", seconds=round(time.monotonic() - started, 3), error=_one_line(exc),
                            run_id=tries.run_id if tries else None, **_facts(job, logical_date, options)))
        raise


def _facts(job: Job, logical_date: date, options: RunOptions) -> dict[str, Any]:
    """What an outcome of every kind says of the run: its job, table, date, trigger and tick."""
    return dict(job=job.name, table=job.output.table, logical_date=logical_date.isoformat(), trigger=options.trigger,
                scheduled_for=options.scheduled_for.isoformat() if options.scheduled_for else None)


def notify(job: Job, outcome: Outcome) -> None:
    """Every hook of ``job`` for ``outcome``, one after the other; a failing hook is logged, never raised."""
    event = _EVENTS[outcome.status]
    for hook in getattr(job.notify, event):
        if hook.command is not None:
            _guarded(job, f"notify.{event} command {_program(hook.command)!r}",
                     lambda: run_command(hook, outcome, job.path.parent))
        if hook.webhook is not None:
            _guarded(job, f"notify.{event} webhook to {_origin(hook.webhook)}", lambda: post(hook, outcome))


def run_command(hook: Hook, outcome: Outcome, cwd: Path) -> None:
    """Run the hook's command through the shell in ``cwd`` (the job file's folder), the facts on stdin and in
    its environment; past the timeout its whole process group is killed.

    Raises:
        RuntimeError: a non-zero exit (with the last line of its stderr) or the timeout.
    """
    timeout = hook.timeout or COMMAND_TIMEOUT
    with subprocess.Popen(hook.command, shell=True, cwd=cwd, env={**os.environ, **outcome.environment()},
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as child:  # on the way out: its pipes closed, the shell reaped
        try:
            _, stderr = child.communicate(json.dumps(outcome.facts()).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # not drained: a process it detached (setsid) is out of the group and may hold the pipes for ever
            raise RuntimeError(f"timed out after {timeout:g} s") from None
    if child.returncode != 0:
        said = stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"exit status {child.returncode}" + (f": {said[-1]}" if said else ""))


def post(hook: Hook, outcome: Outcome) -> None:
    """POST the hook's payload as JSON; a ``user:password@`` in the URL is sent as HTTP Basic authentication
    (urllib would take it for part of the host name).

    Raises:
        OSError: the server could not be reached, timed out or answered with an HTTP error.
    """
    parts = urlsplit(hook.webhook)
    headers = {"Content-Type": "application/json", "User-Agent": "prediction-pipeline"}
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])),
                                     data=json.dumps(payload(hook.format, outcome)).encode(), method="POST",
                                     headers=headers)
    timeout = hook.timeout or WEBHOOK_TIMEOUT
    failed: list[BaseException] = []

    def send() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except BaseException as exc:  # noqa: BLE001 - passed to the caller below
            failed.append(exc)

    # urlopen's timeout bounds each socket operation, not the request: a server trickling its answer (or a slow
    # name lookup) held a run, and a scheduler's later ticks, for ever. The request runs in a daemon thread and
    # is given up at the hook's timeout, the thread left to its socket's timeouts.
    sender = threading.Thread(target=send, name=f"webhook to {parts.hostname}", daemon=True)
    sender.start()
    sender.join(timeout)
    if sender.is_alive():
        raise TimeoutError(f"no whole answer within {timeout:g} s")
    if failed:
        raise failed[0]


def payload(fmt: str, outcome: Outcome) -> Any:
    """The body a webhook of format ``fmt`` (json, slack or alertmanager) receives."""
    if fmt == "slack":
        return slack(outcome)
    if fmt == "alertmanager":
        return alerts(outcome)
    return outcome.facts()


def slack(outcome: Outcome) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (what notifications show) and blocks with the facts."""
    icon = {"failed": ":x:", "succeeded": ":white_check_mark:", "skipped": ":fast_forward:"}[outcome.status]
    text = f"{icon} {_escape(outcome.message)}"
    shown = [("table", outcome.table), ("logical date", outcome.logical_date), ("version", outcome.version),
             ("rows", outcome.rows), ("trigger", outcome.trigger), ("host", outcome.host)]
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{_escape(str(value))}"} for name, value in shown
              if value is not None]
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
                                     {"type": "section", "fields": fields}]}


def alerts(outcome: Outcome) -> list[dict[str, Any]]:
    """Alertmanager's ``/api/v2/alerts`` body: one alert per job and table, firing on a failure (for
    :data:`ALERT_FIRES_FOR`) and resolved by a success or a skip, which ends it now."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ends = now + ALERT_FIRES_FOR if outcome.status == "failed" else now
    facts = {k: v for k, v in outcome.facts().items() if k not in ("job", "table", "message") and v is not None}
    annotations = {"summary": outcome.message, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                                  for k, v in facts.items()}}
    return [{"labels": {"alertname": ALERT_NAME, "pipeline_job": outcome.job, "table": outcome.table},
             "annotations": annotations, "startsAt": _rfc3339(now), "endsAt": _rfc3339(ends)}]


def _guarded(job: Job, name: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception as exc:  # a notifier never changes the run's outcome
        log.warning("%s: %s failed (the run's outcome stands): %s", job.name, name, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    """The error's first line, any password in it masked: it goes to chat rooms and pagers."""
    said = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {first_line(exc)}"
    return hide_passwords((said.strip().splitlines() or [type(exc).__name__])[0])


def _program(command: str) -> str:
    """The program a command runs, to name it in a warning without its arguments (which may hold a token)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[0] if words else command


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a webhook, as written: its path, query and user info often hold the token. Never
    raises, even on a port that cannot be (which the POST then fails on, as a hook's failure)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _escape(text: str) -> str:
    """Slack's mrkdwn reserves &, < and >."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
