"""Which rows of a table hold the person: a predicate built from the table's schema.

Every string value of a table is compared, whatever its column is called: top-level string
columns, string elements of arrays, keys and values of maps, fields of structs (recursively).
A value matches when it

- equals one of the person's values (raw identifiers known in clear, keyed hashes, customer ids);
- is held by a column that may carry a raw identifier (``email``, ``phone``, ``device_id``,
  ``user_id``, ``anonymous_id``, ``identifier``, or a name ending in one of them) and its keyed
  hash is one of the person's hashes;
- contains one of the person's values as a whole word, case-insensitively (the characters
  around it cannot continue an identifier): free text, raw lines, JSON text;
- is a raw line (a column named ``_raw*``) of a malformed record (``_malformed``; every row
  when the table has no such flag) with a token whose keyed hash is one of the person's hashes:
  identifiers of the person known only as hashes (a second email found through the identity
  map) are found in broken lines too.

**Weak identifiers.** A raw value shorter than 6 characters, or a plain number of fewer than 10
digits (a numeric user id such as ``1000``), would also match prices, durations and counts of
other people's records. Such values are compared only in identifier columns (by name, as above,
plus ``customer_id``, ``src``, ``dst`` and ``*_hash``), never searched in other columns or text,
and their hashes are not compared with the tokens of raw lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.core import pii
from seglake.core.erasure import TOKEN_DELIMITERS

#: characters that continue an identifier: a free-text match may not touch one of them
#: (a dot may follow a match, so "write to a@b.org." still matches a@b.org)
_CONTINUES_BEFORE = "A-Za-z0-9_.@+\\-"
_CONTINUES_AFTER = "A-Za-z0-9_@+\\-"
#: columns that may hold a raw identifier (also hashed and compared)
_RAW_IDENTIFIER_NAME = re.compile(r"(?:^|_)(?:user_id|anonymous_id|device_id|email|phone|identifier)$", re.I)
#: columns that hold identifiers (raw, hashed, customer ids): weak values are compared there too
_IDENTIFIER_NAME = re.compile(r"(?:^|_)(?:user_id|anonymous_id|device_id|customer_id|email|phone|identifier|src|dst"
                              r"|hash)$", re.I)
_PLAIN_NUMBER = re.compile(r"[+-]?\d{1,9}(?:[.,]\d+)?")


def distinctive(value: str) -> bool:
    """Whether a raw value is specific enough to be searched in any column and in text: at least
    6 characters and not a plain number of fewer than 10 digits (see "Weak identifiers")."""
    v = value.strip()
    return len(v) >= 6 and not _PLAIN_NUMBER.fullmatch(v)


@dataclass(frozen=True)
class Person:
    """What identifies the person of one erasure request (never logged).

    Attributes:
        given: the identifiers as the request named them.
        raw: identifiers known in clear: ``given`` plus the user_id/anonymous_id values found.
        hashes: keyed hashes (:func:`seglake.core.pii.hash_identifier`) of every identifier of the
            person, including those of ``raw``: the ledger keeps exactly these.
        customer_ids: the person's customer ids (current, and earlier ones no one else holds now).
        weak: raw values too short or too plain to search outside identifier columns
            (:func:`distinctive`); weak_hashes: their hashes (not compared with raw-line tokens).
    """

    given: tuple[str, ...]
    raw: tuple[str, ...]
    hashes: tuple[str, ...]
    customer_ids: tuple[str, ...] = ()
    weak: tuple[str, ...] = ()
    weak_hashes: tuple[str, ...] = ()

    @property
    def values(self) -> list[str]:
        """Every value that identifies the person in an identifier column: raw, hashed, customer ids."""
        return sorted({v for v in (*self.raw, *self.hashes, *self.customer_ids) if v})

    @property
    def searchable(self) -> list[str]:
        """The values searched in any column, in text and in files: :attr:`values` but the weak ones."""
        weak = set(self.weak)
        return [v for v in self.values if v not in weak]


def search_pattern(values: list[str]) -> str | None:
    """A case-insensitive Java regex finding any of ``values`` as a whole word, or None."""
    vals = sorted({v for v in values if v}, key=lambda v: (-len(v), v))
    if not vals:
        return None
    alternatives = "|".join("\\Q" + v.replace("\\E", "\\E\\\\E\\Q") + "\\E" for v in vals)
    return f"(?i)(?<![{_CONTINUES_BEFORE}])(?:{alternatives})(?![{_CONTINUES_AFTER}])"


def _holds_raw_identifier(name: str) -> bool:
    return bool(_RAW_IDENTIFIER_NAME.search(name))


def _is_identifier_column(name: str) -> bool:
    return bool(_IDENTIFIER_NAME.search(name))


def _is_raw_text(name: str) -> bool:
    return name.startswith("_raw")


def _has_strings(dtype: T.DataType) -> bool:
    if isinstance(dtype, T.StringType):
        return True
    if isinstance(dtype, T.ArrayType):
        return _has_strings(dtype.elementType)
    if isinstance(dtype, T.MapType):
        return _has_strings(dtype.keyType) or _has_strings(dtype.valueType)
    if isinstance(dtype, T.StructType):
        return any(_has_strings(f.dataType) for f in dtype.fields)
    return False


def _any(parts: list[Column]) -> Column | None:
    return reduce(lambda a, b: a | b, parts) if parts else None


class _Matcher:
    """Builds the per-value predicates of one table (see the module docstring)."""

    def __init__(self, person: Person, key: str, malformed: Column | None):
        self.values = person.values
        self.strong = person.searchable
        self.hashes = sorted(set(person.hashes))
        weak_hashes = set(person.weak_hashes)
        self.token_hashes = [h for h in self.hashes if h not in weak_hashes]
        self.pattern = search_pattern(self.strong)
        self.key = key
        self.malformed = malformed

    def string(self, c: Column, name: str) -> Column:
        exact = self.values if _is_identifier_column(name) else self.strong
        p = c.isin(exact) if exact else F.lit(False)
        if self.hashes and _holds_raw_identifier(name):
            p = p | pii.hash_identifier(c, self.key).isin(self.hashes)
        if self.pattern:
            p = p | c.rlike(self.pattern)
        if self.token_hashes and _is_raw_text(name):
            tokens = F.exists(F.split(c, TOKEN_DELIMITERS),
                              lambda t: pii.hash_identifier(t, self.key).isin(self.token_hashes))
            p = p | (tokens if self.malformed is None else (self.malformed & tokens))
        return p

    def value(self, c: Column, dtype: T.DataType, name: str) -> Column | None:
        if isinstance(dtype, T.StringType):
            return self.string(c, name)
        if not _has_strings(dtype):
            return None
        if isinstance(dtype, T.ArrayType):
            return F.exists(c, lambda x: self.value(x, dtype.elementType, name))
        if isinstance(dtype, T.MapType):
            parts = []
            if _has_strings(dtype.keyType):
                parts.append(F.exists(F.map_keys(c), lambda x: self.value(x, dtype.keyType, name)))
            if _has_strings(dtype.valueType):
                parts.append(F.exists(F.map_values(c), lambda x: self.value(x, dtype.valueType, name)))
            return _any(parts)
        if isinstance(dtype, T.StructType):
            parts = [self.value(c.getField(f.name), f.dataType, f.name) for f in dtype.fields]
            return _any([F.coalesce(p, F.lit(False)) for p in parts if p is not None])
        return None


def quoted(name: str) -> str:
    """A column name as a Spark SQL identifier (backticks)."""
    return "`" + name.replace("`", "``") + "`"


def column_conditions(schema: T.StructType, person: Person, key: str) -> dict[str, Column]:
    """Top-level column -> predicate true where that column holds the person (null-safe:
    never null); columns that cannot hold a string are left out."""
    fields = {f.name: f.dataType for f in schema.fields}
    malformed = (F.coalesce(F.col("_malformed"), F.lit(False))
                 if isinstance(fields.get("_malformed"), T.BooleanType) else None)
    matcher = _Matcher(person, key, malformed)
    out = {}
    for f in schema.fields:
        p = matcher.value(F.col(quoted(f.name)), f.dataType, f.name)
        if p is not None:
            out[f.name] = F.coalesce(p, F.lit(False))
    return out


def table_condition(schema: T.StructType, person: Person, key: str) -> Column | None:
    """Predicate true for the rows of a table (by its schema) that hold the person; None when
    no column can hold a string."""
    return _any(list(column_conditions(schema, person, key).values()))
