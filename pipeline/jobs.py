"""Read one TOML job file into a frozen :class:`Job` (see :mod:`pipeline.jobspec`), or say exactly what is wrong.

The keys are a contract documented in the README. Validation happens here, once,
so that every later stage can trust the fields it is handed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.cron import cron_trigger
from pipeline.errors import JobFileError
from pipeline.jobspec import (DEFAULT_CHUNK_SIZE, DEFAULT_KEEP, DEFAULT_PUBLISH_TIMEOUT, EXECUTORS, FORMATS, METHODS,
                              NOTIFY_EVENTS, NOTIFY_FORMATS, AuditSpec, DomainSpec, DriftSpec, ExecutorSpec, Factor,
                              GateSpec, Hook, Job, ModelSpec, NotifySpec, OutputSpec, SqlAudit, WaitFor, parse_uri)
from pipeline.names import check_identifier, check_table_name

#: ``[model] format`` when the job does not say, by the model file's suffix (else joblib, or mlflow for a directory).
_FORMAT_BY_SUFFIX = {".skops": "skops", ".onnx": "onnx", ".ubj": "xgboost"}
#: The file in a jobs directory that holds the ``[notify]`` of every job there without one of its own.
DEFAULTS_FILE = "defaults.toml"
#: More tries than this would hide an outage the operator must hear about.
MAX_RETRIES = 10
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_job(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Job:
    """Parse and validate the job file at ``path``.

    Raises:
        JobFileError: naming the file and the offending key.
    """
    path = Path(path)
    environ = dict(os.environ) if environ is None else environ
    if path.name == DEFAULTS_FILE:
        raise JobFileError(f"{path}: not a job: it holds the [notify] defaults of the jobs beside it")
    return _Reader(path, environ).job(_parse(path))


def _parse(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobFileError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read job file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{path}: not valid TOML: {exc}") from None


def notify_defaults(directory: Path, environ: dict[str, str]) -> NotifySpec:
    """The ``[notify]`` of ``directory``'s :data:`DEFAULTS_FILE`, for its jobs that have none of their own."""
    path = directory / DEFAULTS_FILE
    if not path.is_file():
        return NotifySpec()
    raw = _parse(path)
    reader = _Reader(path, environ)
    reader.no_unknown(raw, {"notify"})
    return reader.notify(raw) if "notify" in raw else NotifySpec()


class _Reader:
    """Walks the parsed TOML with the file's name at hand for every message."""

    def __init__(self, path: Path, environ: dict[str, str]) -> None:
        self.path = path
        self.base = path.resolve().parent
        self.environ = environ

    def fail(self, key: str, message: str) -> JobFileError:
        return JobFileError(f"{self.path}: {key}: {message}")

    def section(self, raw: dict[str, Any], key: str, allowed: set[str], prefix: str = "") -> dict[str, Any]:
        value = raw.get(key)
        where = f"{prefix}{key}"
        if value is None:
            raise self.fail(f"[{where}]", "section is missing")
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table ([" + where + "])")
        self.no_unknown(value, allowed, f"{where}.")
        return value

    def no_unknown(self, raw: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise self.fail(f"{prefix}{unknown[0]}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(self, raw: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
            required: bool = False, default: Any = None) -> Any:
        if key not in raw:
            if required:
                raise self.fail(where, "is required")
            return default
        value = raw[key]
        # bool is an int in Python; a job file that says `chunk_size = true` is wrong.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            wanted = _TOML_NAMES.get(names, names)
            article = "an" if wanted[0] in "aeiou" else "a"
            raise self.fail(where, f"must be {article} {wanted}, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise self.fail(where, "must not be empty")
        return value

    def names(self, raw: dict[str, Any], key: str, where: str, required: bool = False) -> tuple[str, ...] | None:
        value = self.get(raw, key, list, where, required=required)
        if value is None:
            return None
        if not value:
            raise self.fail(where, "must list at least one column")
        for item in value:
            if not isinstance(item, str):
                raise self.fail(where, f"must be a list of strings, got {item!r}")
            self.identifier(item, where)
        if len({v.lower() for v in value}) != len(value):  # SQLite column names ignore case
            raise self.fail(where, "lists a column twice (names are compared ignoring case)")
        return tuple(value)

    def identifier(self, name: str, where: str, check: Callable[[str], str] = check_identifier) -> str:
        try:
            return check(name)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None

    def expand(self, value: str, where: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None and not self.environ.get(name):
                return default  # like the shell's ${VAR:-default}: unset or empty takes the default
            if name in self.environ:
                return self.environ[name]
            raise self.fail(where, f"environment variable {name} is not set")

        expanded = _ENV_VAR.sub(replace, value)
        if not expanded.strip():
            raise self.fail(where, f"is empty once the environment is expanded: {value}")
        return expanded

    def file(self, value: str, where: str, directory: bool = False) -> Path:
        """``value`` resolved against the job file's directory; a file that exists (or, with ``directory``,
        a directory)."""
        path = Path(value)
        path = path if path.is_absolute() else self.base / path
        if not (path.is_file() or (directory and path.is_dir())):
            relative = "" if Path(value).is_absolute() else ", relative to the job file's folder"
            raise self.fail(where, f"file not found: {value} (looked for {path.resolve()}{relative})")
        return path

    # -- sections -----------------------------------------------------------

    def job(self, raw: dict[str, Any]) -> Job:
        self.no_unknown(raw, {"name", "description", "schedule", "timezone", "target", "catchup",
                              "misfire_grace_seconds", "domain", "model", "output", "audits", "executor",
                              "gates", "retries", "notify"})
        name = self.get(raw, "name", str, "name", default=self.path.stem)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise self.fail("name", f"{name!r} may hold only letters, digits, '_', '.' and '-'")
        timezone = self.get(raw, "timezone", str, "timezone", default="UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # 'America' is a directory of zones
            raise self.fail("timezone", f"unknown time zone {timezone!r}") from None
        schedule = self.get(raw, "schedule", str, "schedule")
        if schedule is not None:
            self.cron(schedule, timezone)
        target = self.get(raw, "target", str, "target")
        domain = self.domain(self.section(raw, "domain", {"keys", "query", "file", "source", "product", "chunk_size",
                                                          "allow_type_changes", "exclude", "changed", "removed",
                                                          "full_every", "incremental"}))
        domain_keys = domain.keys
        grace = self.get(raw, "misfire_grace_seconds", int, "misfire_grace_seconds", default=300)
        if grace < 1:
            raise self.fail("misfire_grace_seconds", "must be at least 1")
        retries = self.get(raw, "retries", int, "retries", default=0)
        if not 0 <= retries <= MAX_RETRIES:
            raise self.fail("retries", f"must be from 0 to {MAX_RETRIES}")
        job = Job(
            catchup=self.get(raw, "catchup", bool, "catchup", default=False),
            misfire_grace_seconds=grace,
            retries=retries,
            name=name,
            path=self.path.resolve(),
            description=self.get(raw, "description", str, "description", default=""),
            schedule=schedule,
            timezone=timezone,
            target=None if target is None else self.expand(target, "target"),
            domain=domain,
            model=self.model(self.section(raw, "model", {"path", "uri", "tracking_uri", "sha256", "method",
                                                          "features", "format", "trusted"})),
            output=self.output(self.section(raw, "output", {"table", "keep", "default", "top_k", "group_by", "publish_timeout",
                                                            "rank_by", "ascending", "grant_select", "include"}),
                               domain_keys),
            audits=self.audits(self.section(raw, "audits", {"allow_empty", "bounds", "drift", "sql"})
                               if "audits" in raw else {}),
            executor=self.executor(self.section(raw, "executor", {"kind", "address", "workers", "partitions"})
                                   if "executor" in raw else {}),
            gates=self.gates(self.section(raw, "gates", {"wait_for", "wait_timeout", "poll_interval", "max_rows_change",
                                                         "max_null_change", "max_psi"}) if "gates" in raw else {}),
            notify=self.notify(raw) if "notify" in raw else notify_defaults(self.path.parent, self.environ),
        )
        if domain.changed is not None and job.output.top_k:
            raise self.fail("domain.changed", "cannot go with output.top_k (a changed row moves its whole group, "
                                              "so every run is a full one)")
        if domain.incremental and job.executor.kind != "local":
            raise self.fail("domain.incremental", "top-ups run on the local executor ([executor] kind = \"local\")")
        return job

    def cron(self, expression: str, timezone: str) -> None:

        try:
            cron_trigger(expression, timezone)
        except ValueError as exc:
            raise self.fail("schedule", f"not a valid cron expression {expression!r}: {exc}") from None

    def factor(self, raw: dict[str, Any], where: str, default_source: str | None) -> Factor:
        query = self.get(raw, "query", str, f"{where}.query")
        file = self.get(raw, "file", str, f"{where}.file")
        if (query is None) == (file is None):
            raise self.fail(where, "needs exactly one of 'query' or 'file'")
        source = self.get(raw, "source", str, f"{where}.source")
        if file is not None:
            if source is not None:
                raise self.fail(f"{where}.source", "goes with 'query', not with 'file'")
            path = self.file(file, f"{where}.file")
            if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
                raise self.fail(f"{where}.file", f"must end in .csv or .parquet: {file}")
            return Factor(file=path)
        source = self.expand(source, f"{where}.source") if source is not None else default_source
        return Factor(query=query, source=source)

    def domain(self, raw: dict[str, Any]) -> DomainSpec:
        keys = self.names(raw, "keys", "domain.keys", required=True)
        chunk_size = self.get(raw, "chunk_size", int, "domain.chunk_size", default=DEFAULT_CHUNK_SIZE)
        if chunk_size < 1:
            raise self.fail("domain.chunk_size", "must be at least 1")
        allow = self.get(raw, "allow_type_changes", bool, "domain.allow_type_changes", default=False)
        source = self.get(raw, "source", str, "domain.source")
        source = None if source is None else self.expand(source, "domain.source")
        exclude = self.exclusions(raw, source)
        product = self.get(raw, "product", list, "domain.product")
        changes = self.changes(raw, product is None and "query" in raw)
        if product is None:
            plain = {k: v for k, v in raw.items() if k in ("query", "file", "source")}
            return DomainSpec(keys, (self.factor(plain, "domain", None),), chunk_size, allow, exclude, **changes)
        for key in ("query", "file"):
            if key in raw:
                raise self.fail(f"domain.{key}", "cannot be combined with [[domain.product]]")
        if not product:
            raise self.fail("domain.product", "must list at least one factor")
        factors = []
        for i, item in enumerate(product):
            where = f"domain.product[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "must be a table ([[domain.product]])")
            self.no_unknown(item, {"query", "file", "source"}, f"{where}.")
            factors.append(self.factor(item, where, source))
        return DomainSpec(keys, tuple(factors), chunk_size, allow, exclude)

    def exclusions(self, raw: dict[str, Any], source: str | None) -> Factor | None:
        """``exclude``: a query (on the domain's source) or a table with ``query``/``file``/``source``."""
        exclude = raw.get("exclude")
        if exclude is None:
            return None
        if isinstance(exclude, str):
            exclude = {"query": exclude}
        if not isinstance(exclude, dict):
            raise self.fail("domain.exclude", "must be a query or a table with 'query' or 'file'")
        self.no_unknown(exclude, {"query", "file", "source"}, "domain.exclude.")
        return self.factor(exclude, "domain.exclude", source)

    def changes(self, raw: dict[str, Any], one_query: bool) -> dict[str, Any]:
        """``changed``, ``removed``, ``full_every`` and ``incremental``: what a change-driven top-up reads."""
        found = dict(changed=self.get(raw, "changed", str, "domain.changed"),
                     removed=self.get(raw, "removed", str, "domain.removed"),
                     full_every=self.get(raw, "full_every", int, "domain.full_every"),
                     incremental=self.get(raw, "incremental", bool, "domain.incremental", default=False))
        if found["changed"] is None:
            for key in ("removed", "full_every", "incremental"):
                if key in raw:
                    raise self.fail(f"domain.{key}", "goes with domain.changed (the query of the rows changed since "
                                                     ":since)")
            return found
        if not one_query:
            raise self.fail("domain.changed", "needs a domain of one query (not a file nor [[domain.product]])")
        if "exclude" in raw:
            raise self.fail("domain.exclude", "cannot go with domain.changed: a top-up reads only the changed rows "
                                              "and would miss what the list leaves out since the last run")
        if found["full_every"] is not None and found["full_every"] < 1:
            raise self.fail("domain.full_every", "must be at least 1")
        return found

    def model(self, raw: dict[str, Any]) -> ModelSpec:
        path, uri = self.get(raw, "path", str, "model.path"), self.get(raw, "uri", str, "model.uri")
        if (path is None) == (uri is None):
            raise self.fail("model", "needs exactly one of 'path' or 'uri'")
        method = self.get(raw, "method", str, "model.method", default="predict")
        if method not in METHODS:
            raise self.fail("model.method", f"must be one of {', '.join(METHODS)}, got {method!r}")
        sha256 = self.get(raw, "sha256", str, "model.sha256")
        if sha256 is not None:
            sha256 = sha256.lower()
            if not re.fullmatch(r"[0-9a-f]{64}", sha256):
                raise self.fail("model.sha256", "must be 64 hexadecimal digits")
        common = dict(method=method, sha256=sha256, features=self.names(raw, "features", "model.features"))
        if uri is not None:
            return self.registry_model(raw, uri, common)
        if "tracking_uri" in raw:
            raise self.fail("model.tracking_uri", "goes with 'uri', not with 'path'")
        path = self.file(path, "model.path", directory=True)
        mlflow = (path / "MLmodel").is_file()
        fmt = self.get(raw, "format", str, "model.format",
                       default="mlflow" if mlflow else _FORMAT_BY_SUFFIX.get(path.suffix.lower(), "joblib"))
        if fmt not in FORMATS:
            raise self.fail("model.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if path.is_dir() and not mlflow:
            raise self.fail("model.path", f"{raw['path']} is a directory, but not an MLflow model "
                            "(no MLmodel in it)")
        if path.is_dir() and fmt != "mlflow":
            raise self.fail("model.format", f"{raw['path']} is an MLflow model directory, so format must be 'mlflow'")
        if fmt == "mlflow" and not path.is_dir():
            raise self.fail("model.format", "'mlflow' takes an MLflow model directory (holding MLmodel), not a file")
        trusted = self.get(raw, "trusted", list, "model.trusted", default=[])
        if any(not isinstance(t, str) or not t for t in trusted):
            raise self.fail("model.trusted", "must be a list of type names such as 'sklearn.linear_model.LogisticRegression'")
        if trusted and fmt != "skops":
            raise self.fail("model.trusted", f"goes with format = 'skops', not {fmt!r} (only skops loads just the "
                            "types a job trusts)")
        return ModelSpec(path=path, format=fmt, trusted=tuple(trusted), **common)

    def registry_model(self, raw: dict[str, Any], uri: str, common: dict[str, Any]) -> ModelSpec:

        for key in ("format", "trusted"):
            if key in raw:
                raise self.fail(f"model.{key}", "goes with 'path' (the registry records how its model was saved)")
        try:
            parse_uri(uri)
        except ValueError as exc:
            raise self.fail("model.uri", str(exc)) from None
        tracking_uri = self.get(raw, "tracking_uri", str, "model.tracking_uri")
        return ModelSpec(uri=uri, tracking_uri=None if tracking_uri is None else self.expand(
            tracking_uri, "model.tracking_uri"), **common)

    def output(self, raw: dict[str, Any], keys: tuple[str, ...]) -> OutputSpec:
        table = self.get(raw, "table", str, "output.table", required=True)
        top_k = self.get(raw, "top_k", int, "output.top_k")
        group_by = self.names(raw, "group_by", "output.group_by") or ()
        rank_by = self.get(raw, "rank_by", str, "output.rank_by")
        ascending = self.get(raw, "ascending", bool, "output.ascending", default=False)
        if top_k is None:
            for key in ("group_by", "rank_by", "ascending"):
                if key in raw:
                    raise self.fail(f"output.{key}", "goes with top_k")
        else:
            if top_k < 1:
                raise self.fail("output.top_k", "must be at least 1")
            if not group_by or rank_by is None:
                raise self.fail("output.top_k", "needs group_by (key columns) and rank_by (an output column)")
            outside = [g for g in group_by if g not in keys]
            if outside or len(group_by) == len(keys):
                raise self.fail("output.group_by", f"must be some, not all, of the domain keys ({', '.join(keys)})")
            self.identifier(rank_by, "output.rank_by")
        keep = self.get(raw, "keep", int, "output.keep", default=DEFAULT_KEEP)
        if keep < 1:
            raise self.fail("output.keep", "must be at least 1")
        publish_timeout = self.get(raw, "publish_timeout", int, "output.publish_timeout",
                                   default=DEFAULT_PUBLISH_TIMEOUT)
        if publish_timeout < 1:
            raise self.fail("output.publish_timeout", "must be at least 1 (seconds)")
        default = []
        for column, value in self.get(raw, "default", dict, "output.default", default={}).items():
            self.identifier(column, f"output.default.{column}")
            if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
                raise self.fail(f"output.default.{column}", "must be a finite number")
            if not isinstance(value, (int, float, str, bool)):
                raise self.fail(f"output.default.{column}", f"must be a number, string or boolean, got "
                                                            f"{type(value).__name__}")
            default.append((column, value))
        include = self.names(raw, "include", "output.include") or ()
        clash = [c for c in include if c.lower() in {k.lower() for k in keys}]
        if clash:
            raise self.fail("output.include", f"{', '.join(clash)} is a key, which every version holds already")
        return OutputSpec(table=self.identifier(table, "output.table", check_table_name), keep=keep,
                          default=tuple(default), top_k=top_k, group_by=group_by, rank_by=rank_by, ascending=ascending,
                          publish_timeout=publish_timeout, grant_select=self.roles(raw), include=include)

    def roles(self, raw: dict[str, Any]) -> tuple[str, ...]:
        """``[output] grant_select``: role names, plain identifiers so they are quoted as written; PUBLIC is
        refused, since granting every role is a decision to make by hand."""
        where = "output.grant_select"
        roles = self.get(raw, "grant_select", list, where, default=[])
        for role in roles:
            if not isinstance(role, str):
                raise self.fail(where, f"must be an array of role names, got {role!r}")
            self.identifier(role, where)
            if role.lower() == "public":
                raise self.fail(where, "PUBLIC is not a role; to let every role read, GRANT SELECT ... TO PUBLIC "
                                       "by hand")
        if len(set(roles)) != len(roles):
            raise self.fail(where, "names a role twice")
        return tuple(roles)

    def executor(self, raw: dict[str, Any]) -> ExecutorSpec:
        kind = self.get(raw, "kind", str, "executor.kind", default="local")
        if kind not in EXECUTORS:
            raise self.fail("executor.kind", f"must be one of {', '.join(EXECUTORS)}, got {kind!r}")
        address = self.get(raw, "address", str, "executor.address")
        counts = {}
        for key in ("workers", "partitions"):
            counts[key] = self.get(raw, key, int, f"executor.{key}")
            if counts[key] is not None and counts[key] < 1:
                raise self.fail(f"executor.{key}", "must be at least 1")
        return ExecutorSpec(kind, None if address is None else self.expand(address, "executor.address"), **counts)

    def number(self, raw: dict[str, Any], key: str, where: str, minimum: float | None = None) -> float | None:
        value = self.get(raw, key, (int, float), where)
        if value is None:
            return None
        if isinstance(value, bool) or value != value or value in (float("inf"), float("-inf")):
            raise self.fail(where, f"must be a finite number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"must be at least {minimum}")
        return float(value)

    def audits(self, raw: dict[str, Any]) -> AuditSpec:
        allow_empty = self.get(raw, "allow_empty", bool, "audits.allow_empty", default=False)
        bounds = []
        for column, limits in self.get(raw, "bounds", dict, "audits.bounds", default={}).items():
            where = f"audits.bounds.{column}"
            self.identifier(column, where)
            if not isinstance(limits, dict) or not limits:
                raise self.fail(where, "must be a table with min and/or max, e.g. { min = 0, max = 1 }")
            self.no_unknown(limits, {"min", "max"}, f"{where}.")
            low, high = self.number(limits, "min", f"{where}.min"), self.number(limits, "max", f"{where}.max")
            if low is not None and high is not None and low > high:
                raise self.fail(where, f"min {low} is above max {high}")
            bounds.append((column, low, high))
        drift = []
        items = self.get(raw, "drift", (dict, list), "audits.drift", default=[])
        for i, item in enumerate([items] if isinstance(items, dict) else items):
            where = f"audits.drift[{i}]" if isinstance(items, list) else "audits.drift"
            if not isinstance(item, dict):
                raise self.fail(where, "must be a table")
            self.no_unknown(item, {"column", "max_psi", "max_moved_share", "moved_by"}, f"{where}.")
            spec = DriftSpec(
                column=self.identifier(self.get(item, "column", str, f"{where}.column", required=True),
                                       f"{where}.column"),
                max_psi=self.number(item, "max_psi", f"{where}.max_psi", minimum=0),
                max_moved_share=self.number(item, "max_moved_share", f"{where}.max_moved_share", minimum=0),
                moved_by=self.number(item, "moved_by", f"{where}.moved_by", minimum=0) or 0.0,
            )
            if spec.max_psi is None and spec.max_moved_share is None:
                raise self.fail(where, "needs max_psi or max_moved_share (or both)")
            drift.append(spec)
        sql = []
        for i, item in enumerate(self.get(raw, "sql", list, "audits.sql", default=[])):
            where = f"audits.sql[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "must be a table ([[audits.sql]])")
            self.no_unknown(item, {"name", "query"}, f"{where}.")
            name = self.identifier(self.get(item, "name", str, f"{where}.name", required=True), f"{where}.name")
            query = self.get(item, "query", str, f"{where}.query", required=True)
            if "{table}" not in query:
                raise self.fail(f"{where}.query", "must read the new version as {table}")
            sql.append(SqlAudit(name, query))
        if len({a.name for a in sql}) != len(sql):
            raise self.fail("audits.sql", "two audits have the same name")
        return AuditSpec(allow_empty, tuple(bounds), tuple(drift), tuple(sql))

    def notify(self, raw: dict[str, Any]) -> NotifySpec:
        """``[notify]``: each event one hook (``[notify.on_failure]``) or several (``[[notify.on_failure]]``);
        an empty ``[notify]`` turns the defaults off for this job."""
        section = self.section(raw, "notify", set(NOTIFY_EVENTS))
        hooks = {}
        for event in NOTIFY_EVENTS:
            items = self.get(section, event, (dict, list), f"notify.{event}", default=[])
            listed = isinstance(items, list)
            hooks[event] = tuple(self.hook(item, f"notify.{event}[{i}]" if listed else f"notify.{event}")
                                 for i, item in enumerate(items if listed else [items]))
        return NotifySpec(**hooks)

    def hook(self, raw: Any, where: str) -> Hook:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table with command and/or webhook")
        self.no_unknown(raw, {"command", "webhook", "format", "timeout"}, f"{where}.")
        command = self.get(raw, "command", str, f"{where}.command")
        webhook = self.get(raw, "webhook", str, f"{where}.webhook")
        if command is None and webhook is None:
            raise self.fail(where, "needs a command, a webhook or both")
        if webhook is not None:
            webhook = self.expand(webhook, f"{where}.webhook")
            url = urlsplit(webhook)
            if url.scheme not in ("http", "https") or not url.hostname:  # the URL may hold a token: never echoed
                raise self.fail(f"{where}.webhook", "must be an http:// or https:// URL")
        fmt = self.get(raw, "format", str, f"{where}.format", default="json")
        if fmt not in NOTIFY_FORMATS:
            raise self.fail(f"{where}.format", f"must be one of {', '.join(NOTIFY_FORMATS)}, got {fmt!r}")
        if "format" in raw and webhook is None:
            raise self.fail(f"{where}.format", "goes with webhook (a command always gets the JSON facts)")
        timeout = self.number(raw, "timeout", f"{where}.timeout")
        if timeout is not None and timeout <= 0:
            raise self.fail(f"{where}.timeout", "must be more than 0 (seconds)")
        return Hook(command=command, webhook=webhook, format=fmt, timeout=timeout)


    def gates(self, raw: dict[str, Any]) -> GateSpec:
        waits = []
        for i, item in enumerate(self.get(raw, "wait_for", list, "gates.wait_for", default=[])):
            where = f"gates.wait_for[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "must be a table ([[gates.wait_for]])")
            self.no_unknown(item, {"name", "query", "source"}, f"{where}.")
            source = self.get(item, "source", str, f"{where}.source")
            waits.append(WaitFor(
                name=self.identifier(self.get(item, "name", str, f"{where}.name", required=True), f"{where}.name"),
                query=self.get(item, "query", str, f"{where}.query", required=True),
                source=None if source is None else self.expand(source, f"{where}.source")))
        if len({w.name for w in waits}) != len(waits):
            raise self.fail("gates.wait_for", "two gates have the same name")
        seconds = {}
        for key, default in (("wait_timeout", GateSpec.wait_timeout), ("poll_interval", GateSpec.poll_interval)):
            seconds[key] = self.get(raw, key, int, f"gates.{key}", default=default)
            if seconds[key] < 1:
                raise self.fail(f"gates.{key}", "must be at least 1 (seconds)")
        return GateSpec(tuple(waits), **seconds,
                        **{key: self.number(raw, key, f"gates.{key}", minimum=0)
                           for key in ("max_rows_change", "max_null_change", "max_psi")})


_TOML_NAMES = {"str": "string", "int": "integer", "list": "array", "dict": "table", "bool": "boolean"}


def environment_names(jobs_dir: str | os.PathLike[str] = "jobs") -> list[str]:
    """The environment variables the files of ``jobs_dir`` (``defaults.toml`` too) name in ``${...}``: what a run
    started elsewhere (by cron) must be given to read them as they read here."""
    return sorted({match.group(1) for path in Path(jobs_dir).glob("*.toml")
                   for match in _ENV_VAR.finditer(path.read_text(encoding="utf-8", errors="replace"))})


def job_files(jobs_dir: str | os.PathLike[str] = "jobs") -> list[Path]:
    """The job files of ``jobs_dir``: every ``*.toml`` but :data:`DEFAULTS_FILE`."""
    return [path for path in sorted(Path(jobs_dir).glob("*.toml")) if path.name != DEFAULTS_FILE]


def find_job(ref: str, jobs_dir: str | os.PathLike[str] = "jobs") -> Path:
    """Turn a CLI ``JOB`` argument (a path, or a job name in ``jobs_dir``) into a file path."""
    direct = Path(ref)
    if direct.is_file():
        return direct
    candidate = Path(jobs_dir) / f"{ref}.toml"
    if candidate.is_file() and candidate.name != DEFAULTS_FILE:
        return candidate
    for path in job_files(jobs_dir):
        try:
            if load_job(path).name == ref:
                return path
        except JobFileError:
            continue
    raise JobFileError(f"no job file {ref!r}: not a file, and no {candidate} or job named {ref!r} in {jobs_dir}/")


def iter_jobs(jobs_dir: str | os.PathLike[str] = "jobs",
              on_error: Callable[[JobFileError], None] | None = None) -> list[Job]:
    """Every valid job in ``jobs_dir``; invalid files go to ``on_error`` (or are skipped)."""
    found = []
    for path in job_files(jobs_dir):
        try:
            found.append(load_job(path))
        except JobFileError as exc:
            if on_error is not None:
                on_error(exc)
    return found
