"""Pure rules about names and versions: identifiers, version tables, aliases, output columns, which version is
which.

Nothing here touches a database, so every rule is tested without one.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Iterable, Sequence

from pipeline.errors import TableError

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL silently truncates longer names; refuse them instead.
RESERVED_PREFIX = "pipeline_"
#: Room left in an identifier for a version table's suffixes (``__v12345__key``).
MAX_TABLE_LENGTH = MAX_IDENTIFIER_LENGTH - len("__v12345__key")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Columns the pipeline stores beside keys and outputs: the key's A/B bucket (0..99) and a hash
#: of the row's features (what an incremental run compares); ``rank`` with top_k.
BUCKET = "ab_bucket"
INPUT_HASH = "input_hash"
RANK = "rank"
SYSTEM_COLUMNS = (BUCKET, INPUT_HASH)
#: Columns of a lineage's table and log (:func:`lineage_table`) besides the version's: no key or column passed
#: through may be named so in a job whose versions are kept in lineages.
LINEAGE_COLUMNS = ("lineage", "valid_from", "valid_to", "changed_in")
#: The alias of the main view ``<table>``; other aliases name views ``<table>__<alias>``.
DEFAULT_ALIAS = "champion"


def outputs_of(columns: Iterable[tuple[str, str]], keys: Iterable[str]) -> list[tuple[str, str]]:
    """The model's output columns (and ``rank``) of a version: neither keys nor the pipeline's own columns."""
    skip = set(keys) | set(SYSTEM_COLUMNS)
    return [(c, t) for c, t in columns if c not in skip]


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ``ValueError`` saying why.

    Plain means letters, digits and underscores, not starting with a digit: such a
    name means the same on every database once quoted, and cannot smuggle SQL in.
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a safe SQL identifier (letters, digits and '_', not starting with a digit)")
    if len(name) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(f"{name!r} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    return name


def check_table_name(table: str) -> str:
    """A name applications read: a safe identifier outside the pipeline's own namespace."""
    check_identifier(table)
    if len(table) > MAX_TABLE_LENGTH:
        raise ValueError(f"{table!r} is longer than {MAX_TABLE_LENGTH} characters (room is kept for version suffixes)")
    if table.lower().startswith(RESERVED_PREFIX):
        raise ValueError(f"{table!r}: names starting with {RESERVED_PREFIX!r} are the pipeline's own")
    if "__" in table:
        raise ValueError(f"{table!r}: '__' is reserved for version tables (<table>__v<N>)")
    return table


def version_table(table: str, version: int) -> str:
    """The physical table that holds ``version`` of ``table``: ``<table>__v<N>``."""
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    return check_identifier(f"{table}__v{version}")


def lineage_table(table: str, lineage: int) -> str:
    """The table that holds the rows of every version of a lineage (PostgreSQL, jobs with ``[domain] changed``):
    ``<table>__l<L>``, ``L`` being the full run that began it; each version's rows are those whose
    ``[valid_from, valid_to)`` holds its number, and ``<table>__v<N>`` is a view of them."""
    if lineage < 1:
        raise ValueError(f"lineage must be a positive integer, got {lineage}")
    return check_identifier(f"{table}__l{lineage}")


def lineage_log(table: str, lineage: int) -> str:
    """The keys each top-up of a lineage changed or removed, by version: ``<table>__l<L>__log``. Undoing a version
    that failed, and freeing the rows only retired versions saw, find their rows through it by key."""
    return check_identifier(f"{lineage_table(table, lineage)}__log")


def serving_table(table: str, columns: Sequence[tuple[str, str]], lineages: bool = False) -> str:
    """The table that holds ``table``'s serving versions of these ``columns`` (as partitions on PostgreSQL, as
    rows keyed by version on MariaDB): ``<table>__p<hash of the columns>``, so other columns get one of their own;
    ``lineages``: the one whose partitions are lineages (:func:`lineage_table`), of another hash."""
    described = [list(c) for c in columns] + ([["lineage"]] if lineages else [])
    digest = hashlib.sha1(json.dumps(described).encode()).hexdigest()[:6]
    return check_identifier(f"{table}__p{digest}")


def gate_table(table: str) -> str:
    """Where the views' gate is a table of its own: ``<table>__gate``, one row per alias."""
    return check_identifier(f"{table}__gate")


def served_table(table: str) -> str:
    """Where versions are copied into a serving table: ``<table>__served``, one row per version copied whole."""
    return check_identifier(f"{table}__served")


def view_name(table: str, alias: str = "champion") -> str:
    """The view an alias serves: the table's own name for ``champion``, else ``<table>__<alias>``."""
    return table if alias == "champion" else f"{table}__{alias}"


def column_suffix(label: object) -> str:
    """The tail of a column name for a class label: accents transliterated, other characters folded to ``_``.

    ``"Élevé"`` gives ``eleve``, ``"high risk"`` ``high_risk``, ``-1`` ``neg1``, ``True`` ``true``. A label
    with letters that have no ASCII form (``"高"``) gives ``""``: it cannot name a column.
    """
    text = unicodedata.normalize("NFKD", str(label).strip())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    if any(ch.isalnum() and not ch.isascii() for ch in text):
        return ""
    if text.startswith("-"):
        text = "neg" + text[1:]  # labels -1 and 1 must not both become proba_1
    return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower()


def class_columns(prefix: str, labels: Sequence[object]) -> list[str]:
    """One column name per class label, injective: ``<prefix>_<suffix>`` when every label gives a distinct,
    valid name that way, else ``<prefix>_<index>`` for every class (the mapping is recorded per version)."""
    suffixes = [column_suffix(label) for label in labels]
    names = [f"{prefix}_{suffix}" for suffix in suffixes]
    usable = all(suffix and _IDENTIFIER.fullmatch(name) and len(name) <= MAX_IDENTIFIER_LENGTH
                 for suffix, name in zip(suffixes, names))
    if usable and len(set(names)) == len(names):
        return names
    return [f"{prefix}_{i}" for i in range(len(labels))]


def output_columns(method: str, classes: Sequence[object] | None, width: int) -> list[str]:
    """Name the output columns of ``method`` for a model with ``classes`` and ``width`` outputs.

    ``predict`` gives ``prediction``; ``predict_proba`` one ``proba_<class>`` per class;
    ``decision_function`` gives ``score``, or ``score_<class>`` when it has a column per class.
    A ``predict`` of several named outputs (an MLflow signature's columns, passed as ``classes``)
    gives ``prediction_<name>`` each. Class labels and names become columns by :func:`class_columns`.
    """
    if width == 1 and method != "predict_proba":
        return ["prediction" if method == "predict" else "score"]
    prefix = {"predict": "prediction", "predict_proba": "proba", "decision_function": "score"}[method]
    usable = classes is not None and len(classes) == width
    return class_columns(prefix, list(classes) if usable else list(range(width)))


def output_labels(method: str, classes: Sequence[object] | None, outputs: Sequence[str]) -> list[tuple[str, object]]:
    """Which class each output column holds, as recorded per version: ``[(column, label), ...]``; empty for
    ``prediction`` and a binary ``score``. Labels are plain JSON values (numpy scalars unwrapped)."""
    if len(outputs) == 1 and method != "predict_proba":
        return []
    labels = list(classes) if classes is not None and len(classes) == len(outputs) else list(range(len(outputs)))
    return [(column, label.item() if hasattr(label, "item") else label) for column, label in zip(outputs, labels)]


def previous_version(usable: Iterable[int], active: int) -> int | None:
    """The version a rollback goes to: the newest usable version older than ``active``."""
    older = [v for v in usable if v < active]
    return max(older) if older else None


def labels_text(labels: Iterable[Sequence[object]]) -> str:
    """The class each output column holds, for people: ``proba_eleve=Élevé, proba_faible=faible``."""
    return ", ".join(f"{column}={label}" for column, label in labels)


#: Alias names kept for objects of the pipeline's own (the A/B split, the default row, the gate, MariaDB's mark of
#: the versions copied into a serving table).
RESERVED_ALIASES = ("ab", "default", "gate", "served")


def check_alias(table: str, alias: str) -> str:
    """An alias names a view ``<table>__<alias>``: a safe identifier that fits, not a reserved one."""
    if alias == DEFAULT_ALIAS:
        return alias
    if alias in RESERVED_ALIASES or not alias.isidentifier() or not alias.isascii() or alias != alias.lower():
        raise TableError(f"alias {alias!r} must be lower-case letters, digits and '_', and not one of "
                         f"{', '.join(RESERVED_ALIASES)}")
    if alias.startswith("_"):  # <table>__<_x> is <table_>__<x>: another table's version, gate or alias
        raise TableError(f"alias {alias!r} must not begin with '_': {view_name(table, alias)} could be a name of "
                         f"table {table}_")
    if re.fullmatch(r"[vl][0-9]+|p[0-9a-f]{6}", alias):
        raise TableError(f"alias {alias!r} would name one of the pipeline's tables (<table>__v<N> holds a version, "
                         "<table>__l<N> a lineage, <table>__p<hash> the serving partitions); choose another")
    try:
        check_identifier(view_name(table, alias))
    except ValueError as exc:
        raise TableError(f"alias {alias!r}: {exc}") from None
    return alias
