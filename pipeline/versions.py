"""Pure rules about versions: names, identifiers, output columns, which version is which.

Nothing here touches a database, so every rule is tested without one.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

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


def view_name(table: str, alias: str = "champion") -> str:
    """The view an alias serves: the table's own name for ``champion``, else ``<table>__<alias>``."""
    return table if alias == "champion" else f"{table}__{alias}"


def column_suffix(label: object) -> str:
    """Turn a class label into the tail of a column name (``proba_<label>``)."""
    text = str(label).strip()
    if text.startswith("-"):
        text = "neg" + text[1:]  # labels -1 and 1 must not both become proba_1
    text = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower()
    return text or "blank"


def output_columns(method: str, classes: Sequence[object] | None, width: int) -> list[str]:
    """Name the output columns of ``method`` for a model with ``classes`` and ``width`` outputs.

    ``predict`` gives ``prediction``; ``predict_proba`` one ``proba_<class>`` per class;
    ``decision_function`` gives ``score``, or ``score_<class>`` when it has a column per class.
    """
    if method == "predict":
        names = ["prediction"]
    elif method == "predict_proba":
        labels = list(classes) if classes is not None else list(range(width))
        names = [f"proba_{column_suffix(c)}" for c in labels]
    elif width == 1:
        names = ["score"]
    else:
        labels = list(classes) if classes is not None and len(classes) == width else list(range(width))
        names = [f"score_{column_suffix(c)}" for c in labels]
    for name in names:
        check_identifier(name)
    if len(set(names)) != len(names):
        raise ValueError(f"class labels collide as column names: {', '.join(names)}")
    return names


def previous_version(usable: Iterable[int], active: int) -> int | None:
    """The version a rollback goes to: the newest usable version older than ``active``."""
    older = [v for v in usable if v < active]
    return max(older) if older else None
