"""The DuckDB side of ``bench/compare.py``: seglake's stages written as DuckDB SQL.

Each step takes a ``duckdb.DuckDBPyConnection``, runs set-based SQL only (no pandas, no
Python work per row), leaves its result tables in the connection for the next step and
returns a small dict of counts to compare with seglake's:

====================  ==========================================================================
step                  tables it leaves (all in the connection's default schema)
====================  ==========================================================================
:func:`ingest_clean`  ``bronze_events`` (every landing record as strings, malformed ones too),
                      ``standardized`` (typed + ``_reason``), ``events_quarantine``,
                      ``silver_events`` (valid, deduplicated, durations imputed)
:func:`sessions`      ``customer_events`` (consented silver events + ``customer_id``, null when
                      the anchor is unknown), ``sessionized_events`` (events with a customer +
                      ``session_key``, ``session_seq``, ``event_seq``), ``sessions``
:func:`features`      ``customer_features`` (FEATURE_COLUMNS of one as_of, no scaling columns)
:func:`transitions`   ``journey_events``, ``journeys``, ``journey_transitions``,
                      ``customer_transition_counts``, ``transition_matrix`` (segment 'all')
====================  ==========================================================================

What each step mirrors, and where it knowingly differs from the Spark code, is said in its
docstring. Timestamps are DuckDB ``TIMESTAMP`` values holding UTC (seglake's Spark session
time zone is UTC); no ``TIMESTAMPTZ`` is used, so the connection's time zone does not matter.

Constants and the YAML readers come from seglake itself (``RAW_FIELDS``, ``REASONS``,
``IDENTIFIERS``, ``load_standards``, the journeys' ``load_states``, ``FeatureParams``), so the
two sides read the same contract and configuration; importing them starts no Spark.
"""
from __future__ import annotations

import hashlib
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import duckdb

from seglake.core.contracts import IDENTIFIER_FIELDS, IDENTIFIERS, RAW_FIELDS
from seglake.core.pii import DEV_KEY
from seglake.stages.clean import REASONS, load_standards
from seglake.stages.features import FEATURE_COLUMNS, FeatureParams
from seglake.stages.ingest import FORMAT_BY_EXTENSION
from seglake.stages.journeys.states import ALL, PATH_SEP, UNKNOWN_CHANNEL, StateSpec, load_states
from seglake.stages.sessions import DEFAULT_PAGE_EVENTS, DEFAULT_STATES
from seglake.stages.sessions import load_states as load_session_states

_TRUE = ("true", "1", "yes", "y", "t")     # seglake.stages.clean._TRUE / _FALSE
_FALSE = ("false", "0", "no", "n", "f")
_CSV_HEADER = ",".join(RAW_FIELDS)
#: customer_events columns carried through sessionize: what sessions.session_table and
#: features.compute_features read (seglake's jobs select the same few columns).
_SESSION_INPUT = ("customer_id", "event_key", "event_ts", "session_id", "event_type", "product_id",
                  "device_type", "channel", "source", "revenue_usd", "scroll_depth", "duration_s", "properties")
#: what the journeys job reads (its _EVENT_COLUMNS after the identity join) + event_key.
_JOURNEY_INPUT = ("customer_id", "event_key", "event_ts", "session_id", "event_type", "channel", "page_url")


# --------------------------------------------------------------------------- SQL helpers

def _q(value: object) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _case_map(expr: str, mapping: Mapping[str, object], default: str = "NULL") -> str:
    """``CASE expr WHEN k THEN v ... ELSE default END`` from a small literal mapping."""
    if not mapping:
        return default
    whens = " ".join(f"WHEN {_q(k)} THEN {_q(v) if isinstance(v, str) else f'CAST({_q(repr(float(v)))} AS DOUBLE)'}"
                     for k, v in sorted(mapping.items()))
    return f"(CASE {expr} {whens} ELSE {default} END)"


def _json_object(expr: str) -> str:
    """True when ``expr`` is a JSON object (json_type only runs on valid JSON)."""
    return f"(CASE WHEN json_valid({expr}) THEN json_type({expr}) = 'OBJECT' ELSE false END)"


def _in_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(_q(v) for v in values) + ")"


def _ts_literal(value: datetime | date | str) -> str:
    """A naive-UTC ``TIMESTAMP`` literal (aware datetimes are converted to UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return f"TIMESTAMP {_q(value.isoformat(sep=' '))}"
    return f"TIMESTAMP {_q(value.isoformat() + ' 00:00:00')}"


def _as_date(value: date | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _landing_files(landing_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Landing files by format, like ``seglake.stages.ingest.list_landing``: recursive, format
    from the extension (:data:`FORMAT_BY_EXTENSION`), names starting with ``.`` or ``_``
    skipped (Spark's file index also skips such folders)."""
    root = Path(landing_dir)
    if not root.exists():
        raise ValueError(f"landing folder {root} does not exist")
    out: dict[str, list[str]] = {"json": [], "csv": [], "parquet": []}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(names):
            if name.startswith((".", "_")):
                continue
            low = name.lower()
            for ext, fmt in FORMAT_BY_EXTENSION.items():
                if low.endswith(ext):
                    out[fmt].append(str(Path(folder) / name))
                    break
    return out


def _parquet_files(path: str | os.PathLike) -> list[str]:
    """A Parquet file, or the part files of a folder written by Spark (``_``/``.`` skipped)."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if not p.is_dir():
        raise ValueError(f"{p} is neither a Parquet file nor a folder of Parquet files")
    files = []
    for folder, dirs, names in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        files += [str(Path(folder) / n) for n in sorted(names)
                  if n.endswith(".parquet") and not n.startswith((".", "_"))]
    if not files:
        raise ValueError(f"no Parquet files under {p}")
    return files


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0] or 0)


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection, optionally with ``SET threads`` / ``SET memory_limit``."""
    con = duckdb.connect()
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {_q(memory_limit)}")
    return con


# --------------------------------------------------------------------------- 1. ingest + clean

def _lines_sql(files: list[str]) -> str:
    """One row per text line (``_source_file``, ``value``) of ``files``, split on ``\\r\\n``,
    ``\\n`` or ``\\r`` like Spark's text source."""
    return (f"SELECT filename AS _source_file, "
            f"unnest(regexp_split_to_array(content, '\\r\\n|\\r|\\n')) AS value "
            f"FROM read_text({files!r})")


def _bronze_json(files: list[str]) -> str:
    """``parse_json_lines``: blank lines dropped; a line that is not a JSON object is kept with
    ``_malformed``; fields as strings (numbers, booleans, objects keep their JSON text)."""
    schema = "{" + ", ".join(f'"{c}": "VARCHAR"' for c in RAW_FIELDS) + "}"
    fields = ", ".join(f"p.{_ident(c)} AS {_ident(c)}" for c in RAW_FIELDS)
    return f"""
        SELECT {fields}, value AS _raw, p IS NULL AS _malformed, 'json' AS _format, _source_file
        FROM (SELECT value, _source_file,
                     CASE WHEN {_json_object('value')} THEN json_transform(value, {_q(schema)}) END AS p
              FROM ({_lines_sql(files)}) WHERE trim(value) <> '')"""


def _bronze_csv(files: list[str]) -> str:
    """``parse_csv_lines``: text lines, the header line and blank lines dropped, each line
    split into RFC 4180 fields (``""`` escapes) by a regex; a line without exactly
    ``len(RAW_FIELDS)`` fields is ``_malformed`` and keeps the fields it has (Spark's from_csv in
    PERMISSIVE mode returns that partial row); empty fields (also a quoted ``""``) are null. An
    unterminated quote takes the rest of the line (as univocity does)."""
    n = len(RAW_FIELDS)
    token = r',("(?:[^"]|"")*"|"(?:[^"]|"")*$|[^,]*)'
    unq = ("CASE WHEN starts_with(x, '\"') THEN replace(x[2:CASE WHEN length(x) > 1 AND ends_with(x, '\"') "
           "THEN length(x) - 1 ELSE length(x) END], '\"\"', '\"') ELSE x END")
    fields = ", ".join(f"nullif(t[{i + 1}], '') AS {_ident(c)}"
                       for i, c in enumerate(RAW_FIELDS))
    return f"""
        SELECT {fields}, value AS _raw, _malformed, 'csv' AS _format, _source_file
        FROM (SELECT value, _source_file, t, len(t) <> {n} AS _malformed
              FROM (SELECT value, _source_file,
                           list_transform(regexp_extract_all(',' || value, {_q(token)}, 1), lambda x: {unq}) AS t
                    FROM ({_lines_sql(files)})
                    WHERE trim(value) <> '' AND value <> {_q(_CSV_HEADER)}))"""


def _bronze_parquet(con: duckdb.DuckDBPyConnection, files: list[str]) -> str:
    """``parquet_to_bronze``: present raw fields cast to string (maps/structs/lists as JSON),
    absent ones null, ``_raw`` = the record as JSON, never malformed."""
    src = f"read_parquet({files!r}, union_by_name=true, filename=true)"
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    data_cols = [c for c in types if c != "filename"]

    def as_string(c: str) -> str:
        if c not in types:
            return f"CAST(NULL AS VARCHAR) AS {_ident(c)}"
        t = types[c].upper()
        if t.startswith(("MAP", "STRUCT")) or t.endswith("]"):
            return f"CAST(to_json({_ident(c)}) AS VARCHAR) AS {_ident(c)}"
        return f"CAST({_ident(c)} AS VARCHAR) AS {_ident(c)}"

    raw = ("CAST(to_json(struct_pack(" + ", ".join(f"{_ident(c)} := {_ident(c)}" for c in data_cols) + ")) AS VARCHAR)"
           if data_cols else "'{}'")
    return (f"SELECT {', '.join(as_string(c) for c in RAW_FIELDS)}, {raw} AS _raw, false AS _malformed, "
            f"'parquet' AS _format, filename AS _source_file FROM {src}")


def _parse_event_ts(raw: str) -> tuple[list[list[tuple[str, str]]], str]:
    """``seglake.stages.clean.parse_event_ts`` as staged SQL.

    Returns ``(stages, expression)``: ``stages`` are lists of (helper column, SQL) to add in
    successive SELECTs (a stage uses the helpers of the ones before), ``expression`` the UTC
    ``TIMESTAMP`` (null when unparseable) over those helpers.

    Accepted, as in seglake: ISO ``yyyy-MM-dd'T'HH:mm:ss`` with an optional fraction of 1..6
    digits and an offset ``Z`` / ``+HH:MM`` / ``+HHMM`` (none = UTC, a space instead of ``T``
    allowed), or epoch milliseconds (digits, also ``1.754E12``) in [1e11, 1e14). Fields are
    range-checked like Java's strict resolver (hour < 24, second < 60, valid day of month,
    offset within +-18:00).
    """
    s = f"regexp_replace(trim({raw}), '^(\\d{{4}}-\\d{{2}}-\\d{{2}}) ', '\\1T')"
    iso = (r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:?\d{2})$")
    stages = [
        [("_ts_s", s)],
        [("_ts_num", "regexp_full_match(_ts_s, '\\d+(\\.\\d+)?([eE]\\+?\\d+)?')"),
         ("_ts_p", "regexp_extract(CASE WHEN regexp_matches(_ts_s, '(Z|[+-]\\d{2}:?\\d{2})$') THEN _ts_s "
                   f"ELSE _ts_s || 'Z' END, {_q(iso)}, ['y', 'mo', 'd', 'h', 'mi', 's', 'f', 'z'])")],
    ]
    p = "_ts_p"
    off_h = f"TRY_CAST(substr({p}.z, 2, 2) AS INTEGER)"
    off_m = f"TRY_CAST(right({p}.z, 2) AS INTEGER)"
    off_min = (f"(CASE WHEN {p}.z = 'Z' THEN 0 ELSE (CASE WHEN starts_with({p}.z, '-') THEN -1 ELSE 1 END) "
               f"* ({off_h} * 60 + {off_m}) END)")
    off_ok = f"({p}.z = 'Z' OR ({off_h} <= 18 AND {off_m} <= 59 AND ({off_h} < 18 OR {off_m} = 0)))"
    local = (f"TRY_CAST({p}.y || '-' || {p}.mo || '-' || {p}.d || ' ' || {p}.h || ':' || {p}.mi || ':' || {p}.s"
             f" || CASE WHEN {p}.f <> '' THEN '.' || {p}.f ELSE '' END AS TIMESTAMP)")
    iso_ts = (f"CASE WHEN {p}.y <> '' AND TRY_CAST({p}.h AS INTEGER) < 24 AND TRY_CAST({p}.mi AS INTEGER) < 60 "
              f"AND TRY_CAST({p}.s AS INTEGER) < 60 AND {off_ok} THEN {local} - to_minutes({off_min}) END")
    millis = "TRY_CAST(_ts_s AS DOUBLE)"
    from_millis = (f"CASE WHEN {millis} >= 1e11 AND {millis} < 1e14 "
                   f"THEN epoch_ms(CAST(trunc({millis}) AS BIGINT)) END")
    return stages, f"(CASE WHEN _ts_num THEN {from_millis} ELSE {iso_ts} END)"


def _hmac_sha256(expr: str, key: str) -> str:
    """``seglake.core.pii.hmac_sha256`` in DuckDB SQL: HMAC-SHA256 (hex) of ``expr``'s UTF-8 bytes.

    RFC 2104, written here independently of seglake's Spark version: sha256(opad_block ||
    unhex(sha256(ipad_block || encode(v)))), K = the key's UTF-8 bytes (their SHA-256 when longer
    than the 64-byte block) zero-padded to 64 bytes, ipad 0x36, opad 0x5c; null stays null.
    """
    k = key.encode("utf-8")
    if not k:
        raise ValueError("the PII key must be a non-empty string")
    k = (hashlib.sha256(k).digest() if len(k) > 64 else k).ljust(64, b"\x00")
    ipad, opad = bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)
    return (f"sha256(unhex({_q(opad.hex())}) || unhex(sha256(unhex({_q(ipad.hex())}) || encode({expr}))))")


def _pii_hash(raw: str, key: str) -> str:
    """``seglake.core.pii.hash_identifier``: HMAC-SHA256(key, lower(trim(v))), blank -> null."""
    norm = f"nullif(lower(trim({raw})), '')"
    return f"(CASE WHEN {norm} IS NULL THEN NULL ELSE {_hmac_sha256(norm, key)} END)"


def _salt(salt: str | None) -> str:
    """The PII key: ``salt``, else $SEGLAKE_PII_SALT, else seglake's development key."""
    return salt or os.environ.get("SEGLAKE_PII_SALT") or DEV_KEY


def ingest_clean(con: duckdb.DuckDBPyConnection, landing_dir: str | os.PathLike,
                 max_event_ts: datetime | str, standardize_yaml: str | os.PathLike,
                 fx: Mapping[str, float] | None = None, *, salt: str | None = None,
                 consent_default: bool = False, impute_decimals: int = 3) -> dict:
    """Landing files -> ``bronze_events`` -> ``silver_events`` (+ ``events_quarantine``).

    Mirrors ``stages/ingest.py`` (every record kept, fields as strings, malformed JSON lines /
    CSV lines with the wrong field count flagged) and ``stages/clean.py``: ``standardize``
    (timestamps, canonical event type / device / source / channel / currency from
    ``standardize_yaml``, numbers, consent, PII hashed with the same HMAC-SHA256, the first
    applicable reason of :data:`REASONS`), ``derived_event_key`` (same HMAC of the same
    concatenation, so keys equal seglake's when the key is the same), ``dedupe_batch`` (one
    row per event_key; same tie-break order: source file, the SHA-256 of the raw line), ``duration_medians`` +
    ``impute_duration`` (lower median of durations rounded to ``impute_decimals``).

    Args:
        con: the connection.
        landing_dir: the folder the generator wrote (``.../landing``).
        max_event_ts: latest accepted event time (seglake: run start + max_future_skew_minutes);
            naive = UTC.
        standardize_yaml: ``conf/standardize.yaml``.
        fx: optional currency -> USD rates replacing the file's ``currencies.fx_to_usd``.
        salt: PII HMAC key (default: $SEGLAKE_PII_SALT, else seglake's development key).
        consent_default: clean.consent_default.
        impute_decimals: clean.impute_decimals.

    Returns:
        records_in, records_by_format, malformed, quarantined, quarantined_by_reason, valid,
        duplicates (valid rows dropped as duplicates), silver_rows, imputed_durations,
        consent_false.
    """
    std = load_standards(standardize_yaml)
    fx_map = {str(k).upper(): float(v) for k, v in (fx if fx is not None else std.fx_to_usd).items()}
    salt = _salt(salt)
    files = _landing_files(landing_dir)

    # ---- bronze: every record as strings
    parts = []
    if files["json"]:
        parts.append(_bronze_json(files["json"]))
    if files["csv"]:
        parts.append(_bronze_csv(files["csv"]))
    if files["parquet"]:
        parts.append(_bronze_parquet(con, files["parquet"]))
    if not parts:
        raise ValueError(f"no landing files under {landing_dir}")
    con.execute("CREATE OR REPLACE TABLE bronze_events AS " + " UNION ALL BY NAME ".join(parts))

    # ---- standardize: typed, canonical, hashed, with the quarantine reason
    c = {f: f"nullif(trim({_ident(f)}), '')" for f in RAW_FIELDS}
    ts_stages, ts_expr = _parse_event_ts(_ident("event_ts"))
    num_fields = ("price", "quantity", "revenue", "duration_ms", "scroll_depth")
    event_type = _case_map(f"lower({c['event_type']})", std.event_type_map)
    device = (f"CASE WHEN {c['device_type']} IS NULL THEN 'unknown' "
              f"ELSE coalesce({_case_map('lower(' + c['device_type'] + ')', std.device_types)}, 'other') END")
    source = (f"CASE WHEN {c['source']} IS NOT NULL "
              f"THEN coalesce({_case_map('lower(' + c['source'] + ')', std.sources)}, 'other') END")
    channel = f"coalesce({_case_map('lower(' + c['channel'] + ')', std.channels)}, lower({c['channel']}))"
    consent = (f"CASE WHEN lower(trim(consent)) IN {_in_list(_TRUE)} THEN true "
               f"WHEN lower(trim(consent)) IN {_in_list(_FALSE)} THEN false "
               f"ELSE {str(bool(consent_default)).lower()} END")
    no_ids = "coalesce(" + ", ".join(c[f] for f in IDENTIFIER_FIELDS) + ") IS NULL"
    max_ts = _ts_literal(max_event_ts)
    reason_sql = {
        "broken_json": "_malformed AND _format = 'json'",
        "unparseable_record": "_malformed",
        "missing_identifiers": no_ids,
        "unparseable_ts": "_ts IS NULL",
        "future_ts": f"_ts > {max_ts}",
        "unknown_event_type": "_etype IS NULL",
        "negative_price": "_n_price < 0",
        "invalid_number": " OR ".join(f"_bad_{f}" for f in num_fields),
        "out_of_range": ("_n_quantity < 0 OR _n_revenue < 0 OR _n_duration_ms < 0 OR _n_scroll_depth < 0 "
                         "OR _n_scroll_depth > 100 OR abs(_n_quantity) > 2e9"),
    }
    if set(reason_sql) != set(REASONS):   # seglake added or renamed a reason: keep in step
        raise RuntimeError(f"duckdb_side knows reasons {sorted(reason_sql)}, seglake has {sorted(REASONS)}")
    reason = "CASE " + " ".join(f"WHEN {reason_sql[r]} THEN {_q(r)}" for r in REASONS) + " END"
    # NaN and +-Infinity are not numbers (as in seglake's clean)
    finite = {f: f"CASE WHEN isfinite(TRY_CAST({c[f]} AS DOUBLE)) THEN TRY_CAST({c[f]} AS DOUBLE) END"
              for f in num_fields}
    numbers = ", ".join(f"{finite[f]} AS _n_{f}, ({c[f]} IS NOT NULL AND {finite[f]} IS NULL) AS _bad_{f}"
                        for f in num_fields)
    bronze_cols = [*RAW_FIELDS, "_raw", "_malformed", "_format", "_source_file"]
    bronze_struct = "struct_pack(" + ", ".join(f"{_ident(b)} := {_ident(b)}" for b in bronze_cols) + ")"
    ctes, prev = [], "bronze_events"
    for i, stage in enumerate(ts_stages):
        ctes.append(f"_s{i} AS (SELECT *, {', '.join(f'{e} AS {n}' for n, e in stage)} FROM {prev})")
        prev = f"_s{i}"
    # seglake.stages.clean.derived_event_key: HMAC of the identifiers, epoch millis and type
    derived_key = _hmac_sha256("concat_ws('|', coalesce(user_id, ''), coalesce(anonymous_id, ''), "
                               "coalesce(device_id, ''), coalesce(email_hash, ''), coalesce(phone_hash, ''), "
                               "CAST(epoch_ms(event_ts) AS VARCHAR), event_type)", salt)
    con.execute(f"""
        CREATE OR REPLACE TABLE standardized AS
        WITH {', '.join(ctes)},
        t AS (SELECT *, {ts_expr} AS _ts, {event_type} AS _etype, {numbers} FROM {prev}),
        r AS (
            SELECT
                {c['event_id']} AS event_id, {c['user_id']} AS user_id, {c['anonymous_id']} AS anonymous_id,
                {_pii_hash('device_id', salt)} AS device_id, {_pii_hash('email', salt)} AS email_hash,
                {_pii_hash('phone', salt)} AS phone_hash,
                _etype AS event_type, _ts AS event_ts, CAST(_ts AS DATE) AS event_date,
                {source} AS source, {c['session_id']} AS session_id, {c['page_url']} AS page_url,
                {c['product_id']} AS product_id, {c['category']} AS category,
                _n_price AS price,
                CASE WHEN abs(_n_quantity) <= 2e9 THEN CAST(trunc(_n_quantity) AS INTEGER) END AS quantity,
                _n_revenue AS revenue, upper({c['currency']}) AS currency,
                _n_revenue * {_case_map('upper(' + c['currency'] + ')', fx_map)} AS revenue_usd,
                {device} AS device_type, {c['utm_source']} AS utm_source, {c['utm_medium']} AS utm_medium,
                {c['utm_campaign']} AS utm_campaign, {channel} AS channel,
                _n_duration_ms / 1000.0 AS duration_s, _n_scroll_depth / 100.0 AS scroll_depth,
                {consent} AS consent,
                CASE WHEN {_json_object(c['properties'])} THEN {c['properties']} END AS properties,
                _source_file, _raw AS _raw_line, _format, {reason} AS _reason, {bronze_struct} AS _bronze
            FROM t)
        SELECT *, CASE WHEN _reason IS NULL THEN coalesce(event_id, {derived_key}) END AS event_key
        FROM r""")
    con.execute("CREATE OR REPLACE TABLE events_quarantine AS "
                "SELECT unnest(_bronze), _reason AS reason FROM standardized WHERE _reason IS NOT NULL")

    # ---- dedupe (first copy by source file, SHA-256 of the raw line) + duration imputation
    con.execute("""
        CREATE OR REPLACE TABLE _unique_events AS
        SELECT * EXCLUDE (_reason, _format, _bronze) FROM standardized WHERE _reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY event_key
                                   ORDER BY _source_file ASC NULLS LAST, sha256(_raw_line) ASC NULLS LAST) = 1""")
    dec = int(impute_decimals)
    if not 0 <= dec <= 9:
        raise ValueError(f"impute_decimals must be 0..9, got {impute_decimals!r}")
    con.execute(f"""
        CREATE OR REPLACE TABLE _duration_medians AS
        WITH levels AS (
            SELECT event_type, device_type, round(duration_s, {dec}) AS v, count(*) AS n,
                   CASE WHEN grouping(event_type) = 1 THEN 'global' WHEN grouping(device_type) = 1 THEN 'type'
                        ELSE 'type_device' END AS level
            FROM _unique_events WHERE duration_s IS NOT NULL
            GROUP BY GROUPING SETS ((event_type, device_type, v), (event_type, v), (v))),
        cum AS (
            SELECT *, sum(n) OVER (PARTITION BY level, event_type, device_type ORDER BY v
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS c,
                      sum(n) OVER (PARTITION BY level, event_type, device_type) AS total
            FROM levels)
        SELECT level, event_type, device_type, min(v) AS median FROM cum WHERE c * 2 >= total
        GROUP BY level, event_type, device_type""")
    con.execute("""
        CREATE OR REPLACE TABLE silver_events AS
        SELECT u.* EXCLUDE (duration_s),
               coalesce(u.duration_s, td.median, t.median, g.median) AS duration_s,
               u.duration_s IS NULL AND coalesce(td.median, t.median, g.median) IS NOT NULL AS duration_imputed
        FROM _unique_events u
        LEFT JOIN (SELECT * FROM _duration_medians WHERE level = 'type_device') td
               ON td.event_type = u.event_type AND td.device_type = u.device_type
        LEFT JOIN (SELECT * FROM _duration_medians WHERE level = 'type') t ON t.event_type = u.event_type
        LEFT JOIN (SELECT max(median) AS median FROM _duration_medians WHERE level = 'global') g ON true""")
    con.execute("DROP TABLE _unique_events")

    by_reason = dict(con.execute("SELECT _reason, count(*) FROM standardized WHERE _reason IS NOT NULL "
                                 "GROUP BY ALL ORDER BY 1").fetchall())
    by_format = dict(con.execute("SELECT _format, count(*) FROM bronze_events GROUP BY ALL ORDER BY 1").fetchall())
    records_in = sum(by_format.values())
    quarantined = sum(by_reason.values())
    valid = records_in - quarantined
    silver_rows, imputed, consent_false = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE duration_imputed), count(*) FILTER (WHERE NOT consent) "
        "FROM silver_events").fetchone()
    return {
        "records_in": records_in,
        "records_by_format": by_format,
        "malformed": _count(con, "SELECT count(*) FROM bronze_events WHERE _malformed"),
        "quarantined": quarantined,
        "quarantined_by_reason": by_reason,
        "valid": valid,
        "duplicates": valid - int(silver_rows),
        "silver_rows": int(silver_rows),
        "imputed_durations": int(imputed),
        "consent_false": int(consent_false),
    }


# --------------------------------------------------------------------------- 2. identity + sessions

def _sessionize_sql(source: str, inactivity_minutes: int, split_on_session_id: bool) -> str:
    """``seglake.stages.sessions.sessionize`` over ``source`` (events with a customer_id).

    Order per customer: event_ts, event_key. New session: the first event, a gap of more than
    ``inactivity_minutes``, or (``split_on_session_id``) a non-null session_id different from
    the last non-null one before it. session_key = ``customer_id:<epoch ms of the start>``.
    """
    if not isinstance(inactivity_minutes, int) or inactivity_minutes <= 0:
        raise ValueError(f"inactivity_minutes must be a positive integer, got {inactivity_minutes!r}")
    order = "ORDER BY event_ts, event_key"
    split = ("OR (session_id IS NOT NULL AND _prev_sid IS NOT NULL AND session_id <> _prev_sid)"
             if split_on_session_id else "")
    return f"""
        WITH o AS (
            SELECT *, epoch_ms(event_ts) AS _ts_ms,
                   lag(epoch_ms(event_ts)) OVER (PARTITION BY customer_id {order}) AS _prev_ms,
                   last_value(session_id IGNORE NULLS) OVER (PARTITION BY customer_id {order}
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS _prev_sid
            FROM {source}),
        n AS (SELECT *, (_prev_ms IS NULL OR _ts_ms - _prev_ms > {inactivity_minutes * 60_000}) {split} AS _new
              FROM o),
        s AS (SELECT *,
                     sum(CAST(_new AS INTEGER)) OVER (PARTITION BY customer_id {order}
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_seq,
                     last_value(CASE WHEN _new THEN _ts_ms END IGNORE NULLS) OVER (PARTITION BY customer_id {order}
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS _start
              FROM n)
        SELECT * EXCLUDE (_ts_ms, _prev_ms, _prev_sid, _new, _start),
               customer_id || ':' || CAST(_start AS VARCHAR) AS session_key,
               row_number() OVER (PARTITION BY customer_id, session_seq {order}) AS event_seq
        FROM s"""


def sessions(con: duckdb.DuckDBPyConnection, identity_map_parquet: str | os.PathLike,
             inactivity_minutes: int = 30, split_on_session_id: bool = True, *,
             identity_excluded_parquet: str | os.PathLike | None = None,
             states_yaml: str | os.PathLike | None = None,
             page_event_types: Sequence[str] = DEFAULT_PAGE_EVENTS) -> dict:
    """Consented ``silver_events`` + customer ids -> ``sessionized_events`` -> ``sessions``.

    Mirrors ``contracts.customer_events`` (consent = true, then ``attach_customer_id``: the
    anchor is the first non-null identifier in IDENTIFIERS order that is not excluded, one
    join with the map), ``sessions.sessionize`` (see :func:`_sessionize_sql`) and
    ``sessions.session_table`` (one row per (customer_id, session_key): start/end, counts,
    entry/exit state, converted, first known device_type / channel).

    Args:
        con: the connection (after :func:`ingest_clean`).
        identity_map_parquet: silver.identity_map exported as Parquet (file or Spark folder).
        inactivity_minutes, split_on_session_id: the ``sessions:`` settings.
        identity_excluded_parquet: silver.identity_excluded as Parquet; by default the
            ``identity_excluded.parquet`` beside the map when it exists, else none.
        states_yaml: states.yaml for entry/exit states (default: seglake's default mapping).
        page_event_types: sessions.page_event_types (n_pages).

    Returns:
        events (consented), events_with_customer, events_without_customer, sessions,
        session_starts (session boundaries found: differs from sessions only when two sessions
        of a customer start in the same millisecond and so share a session_key), customers.
    """
    map_files = _parquet_files(identity_map_parquet)
    if identity_excluded_parquet is None:
        sibling = Path(identity_map_parquet).with_name("identity_excluded.parquet")
        identity_excluded_parquet = sibling if sibling.exists() else None
    con.execute(f"CREATE OR REPLACE TABLE identity_map AS SELECT identifier_type, identifier, customer_id "
                f"FROM read_parquet({map_files!r}, union_by_name=true)")
    if identity_excluded_parquet is not None:
        ex_files = _parquet_files(identity_excluded_parquet)
        con.execute(f"CREATE OR REPLACE TABLE identity_excluded AS SELECT DISTINCT identifier_type, identifier "
                    f"FROM read_parquet({ex_files!r}, union_by_name=true)")
    else:
        con.execute("CREATE OR REPLACE TABLE identity_excluded (identifier_type VARCHAR, identifier VARCHAR)")

    # one left join per identifier type with its excluded identifiers (small, distinct)
    joins = " ".join(
        f"LEFT JOIN (SELECT identifier, true AS _ex FROM identity_excluded WHERE identifier_type = {_q(t)}) x{i} "
        f"ON x{i}.identifier = e.{_ident(col)}" for i, (t, col) in enumerate(IDENTIFIERS))
    usable = {t: f"(e.{_ident(col)} IS NOT NULL AND x{i}._ex IS NULL)" for i, (t, col) in enumerate(IDENTIFIERS)}
    a_type = "CASE " + " ".join(f"WHEN {usable[t]} THEN {_q(t)}" for t, _ in IDENTIFIERS) + " END"
    a_id = "CASE " + " ".join(f"WHEN {usable[t]} THEN e.{_ident(c)}" for t, c in IDENTIFIERS) + " END"
    con.execute(f"""
        CREATE OR REPLACE TABLE customer_events AS
        SELECT a.* EXCLUDE (_a_type, _a_id), m.customer_id
        FROM (SELECT e.*, {a_type} AS _a_type, {a_id} AS _a_id
              FROM (SELECT * FROM silver_events WHERE consent = true) e {joins}) a
        LEFT JOIN identity_map m ON m.identifier_type = a._a_type AND m.identifier = a._a_id""")
    con.execute("CREATE OR REPLACE TABLE sessionized_events AS "
                + _sessionize_sql(f"(SELECT {', '.join(_SESSION_INPUT)} FROM customer_events "
                                  "WHERE customer_id IS NOT NULL)",
                                  inactivity_minutes, split_on_session_id))

    states = load_session_states(states_yaml) if states_yaml is not None else dict(DEFAULT_STATES)
    state = _case_map("event_type", states)
    pages = _in_list(page_event_types)

    def first_known(col: str) -> str:
        known = f"{col} IS NOT NULL AND {col} <> 'unknown'"
        return (f"coalesce(arg_min({col}, CASE WHEN {known} THEN event_seq END), "
                f"max(CASE WHEN {col} = 'unknown' THEN {col} END))")

    con.execute(f"""
        CREATE OR REPLACE TABLE sessions AS
        SELECT customer_id, session_key, min(event_ts) AS session_start, max(event_ts) AS session_end,
               (epoch_us(max(event_ts)) - epoch_us(min(event_ts))) / 1e6 AS duration_s,
               CAST(count(*) AS INTEGER) AS n_events,
               CAST(sum(CAST(event_type IN {pages} AS INTEGER)) AS INTEGER) AS n_pages,
               CAST(count(DISTINCT product_id) AS INTEGER) AS n_products,
               arg_min(_state, CASE WHEN _state IS NOT NULL THEN event_seq END) AS entry_state,
               arg_max(_state, CASE WHEN _state IS NOT NULL THEN event_seq END) AS exit_state,
               max(CAST(event_type = 'purchase' AS INTEGER)) = 1 AS converted,
               {first_known('device_type')} AS device_type, {first_known('channel')} AS channel,
               CAST(min(event_ts) AS DATE) AS session_date
        FROM (SELECT *, {state} AS _state FROM sessionized_events)
        GROUP BY customer_id, session_key""")
    n_events, with_customer = con.execute(
        "SELECT count(*), count(customer_id) FROM customer_events").fetchone()
    n_sessions, n_customers = con.execute(
        "SELECT count(*), count(DISTINCT customer_id) FROM sessions").fetchone()
    return {
        "events": int(n_events),
        "events_with_customer": int(with_customer),
        "events_without_customer": int(n_events) - int(with_customer),
        "sessions": int(n_sessions),
        "session_starts": _count(con, "SELECT count(DISTINCT (customer_id, session_seq)) FROM sessionized_events"),
        "customers": int(n_customers),
    }


# --------------------------------------------------------------------------- 3. features

def features(con: duckdb.DuckDBPyConnection, as_of: date | str, params: FeatureParams | None = None) -> dict:
    """``seglake.stages.features.compute_features`` for one as_of -> ``customer_features``.

    Input: ``sessionized_events`` of :func:`sessions` (every consented event with a customer,
    sessionized over all dates). seglake sessionizes the events before max(as_of); as a
    session's boundaries depend only on earlier events, filtering the fully sessionized
    events at as_of gives the same sessions (the features module relies on the same fact).
    All FEATURE_COLUMNS are computed (no z_/mm_ scaling columns).

    Returns:
        as_of, rows (customers) and the sum of every count-type column and of the revenue
        columns (for comparison with gold.customer_features).
    """
    params = params or FeatureParams()
    as_of = _as_date(as_of)
    cut = {n: _ts_literal(as_of - timedelta(days=n)) for n in set(params.windows_days) | {30, 90}}
    asof_ts = _ts_literal(as_of)
    purchase = f"event_type IN {_in_list(params.purchase_event_types)}"
    revenue = "coalesce(revenue_usd, 0.0)"
    path = '$."' + params.feature_property_key.replace('"', '\\"') + '"'
    feature_name = f"json_extract_string(properties, {_q(path)})"
    results_path = '$."' + params.search_results_key.replace('"', '\\"') + '"'
    results = f"json_extract_string(properties, {_q(results_path)})"

    def count_if(cond: str) -> str:
        return f"CAST(count(*) FILTER (WHERE {cond}) AS INTEGER)"

    within = {n: f"event_ts >= {cut[n]}" for n in cut}

    def et(name: str, window: int | None = None) -> str:
        return f"event_type = {_q(name)}" + (f" AND {within[window]}" if window else "")

    aggs = [
        "min(event_ts) AS first_seen_ts", "max(event_ts) AS last_seen_ts",
        f"max(CASE WHEN {purchase} THEN event_ts END) AS _last_purchase_ts",
        "count(*) AS _n_events",
        f"{count_if(purchase)} AS purchases_total",
        f"{count_if(et('purchase'))} AS _online_purchases",
        f"sum(CASE WHEN {purchase} THEN {revenue} ELSE 0.0 END) AS revenue_total",
        "avg(scroll_depth) AS avg_scroll_depth",
        f"CAST(count(DISTINCT CASE WHEN {et('feature_use', 30)} THEN {feature_name} END) AS INTEGER) "
        "AS distinct_features_30d",
        f"{count_if(et('product_view', 30))} AS product_views_30d",
        f"{count_if(et('add_to_cart', 30))} AS carts_30d",
        f"{count_if(et('checkout_start', 30))} AS checkouts_30d",
        f"{count_if(et('product_view'))} AS product_views_total",
        f"{count_if(et('add_to_cart'))} AS carts_total",
        f"{count_if(et('checkout_start'))} AS checkouts_total",
        f"{count_if(et('email_open', 90))} AS email_opens_90d",
        f"{count_if(et('email_click', 90))} AS email_clicks_90d",
        f"{count_if(et('push_open', 90))} AS push_opens_90d",
        count_if("source = 'web'") + " AS _n_web",
        count_if("source = 'app'") + " AS _n_app",
        count_if("source = 'email'") + " AS _n_email",
        count_if("device_type IN ('ios', 'android')") + " AS _n_mobile",
        count_if("device_type = 'desktop'") + " AS _n_desktop",
        f"sum(CASE WHEN {et('product_view', 30)} THEN coalesce(duration_s, 0.0) ELSE 0.0 END) "
        "AS product_page_time_s_30d",
        f"{count_if(et('search', 30) + ' AND trim(' + results + ') = ' + _q('0'))} AS failed_searches_30d",
        f"{count_if('event_type IN ' + _in_list(params.support_event_types) + ' AND ' + within[30])} "
        "AS support_contacts_30d",
    ]
    aggs += [f"{count_if(purchase + ' AND ' + within[n])} AS purchases_{n}d" for n in params.windows_days]
    aggs += [f"sum(CASE WHEN {purchase} AND {within[n]} THEN {revenue} ELSE 0.0 END) AS revenue_{n}d"
             for n in params.windows_days if n >= 90]
    sess_aggs = ["avg(_pages) AS pages_per_session",
                 "avg((epoch_us(_end) - epoch_us(_start)) / 1e6) AS avg_session_duration_s"]
    sess_aggs += [f"CAST(count(*) FILTER (WHERE _start >= {cut[n]}) AS INTEGER) AS sessions_{n}d"
                  for n in params.windows_days]
    pages = _in_list(params.page_event_types)

    def ratio(num: str, den: str) -> str:
        return f"CASE WHEN {den} > 0 THEN CAST({num} AS DOUBLE) / {den} END"

    span_s = "(epoch_ms(last_seen_ts) // 1000 - epoch_ms(first_seen_ts) // 1000)"
    asof_d = f"DATE {_q(as_of.isoformat())}"
    finals = {
        "as_of_date": asof_d,
        "tenure_days": f"CAST({asof_d} - CAST(first_seen_ts AS DATE) AS INTEGER)",
        "recency_days": f"CAST({asof_d} - CAST(last_seen_ts AS DATE) AS INTEGER)",
        "recency_purchase_days": f"CAST({asof_d} - CAST(_last_purchase_ts AS DATE) AS INTEGER)",
        "avg_order_value": ratio("revenue_total", "purchases_total"),
        "cart_to_purchase_rate": ratio("_online_purchases", "carts_total"),
        "view_to_cart_rate": ratio("carts_total", "product_views_total"),
        "email_click_rate": ratio("email_clicks_90d", "email_opens_90d"),
        "share_web": ratio("_n_web", "_n_events"), "share_app": ratio("_n_app", "_n_events"),
        "share_email": ratio("_n_email", "_n_events"), "share_mobile": ratio("_n_mobile", "_n_events"),
        "share_desktop": ratio("_n_desktop", "_n_events"),
        "sessions_per_week_30d": "sessions_30d * 7.0 / 30.0",
        "cohort_week": "CAST(date_trunc('week', first_seen_ts) AS DATE)",
        "cohort_month": "CAST(date_trunc('month', first_seen_ts) AS DATE)",
        "is_new_user": f"first_seen_ts >= {_ts_literal(as_of - timedelta(days=params.new_user_days))}",
        "is_long_term": f"{span_s} > {int(params.long_term_days) * 86400}",
        "is_high_frequency": f"sessions_30d * 7.0 / 30.0 > {float(params.high_frequency_sessions_per_week)!r}",
        "is_inactive": f"last_seen_ts < {_ts_literal(as_of - timedelta(days=params.inactive_days))}",
    }
    extra = [f"sessions_{n}d" for n in params.windows_days] + [f"purchases_{n}d" for n in params.windows_days] + \
            [f"revenue_{n}d" for n in params.windows_days if n >= 90]
    out_cols = list(FEATURE_COLUMNS) + [x for x in dict.fromkeys(extra) if x not in FEATURE_COLUMNS]
    select = ", ".join(f"{finals[c]} AS {c}" if c in finals else c for c in out_cols)
    con.execute(f"""
        CREATE OR REPLACE TABLE customer_features AS
        WITH ev AS (SELECT * FROM sessionized_events WHERE customer_id IS NOT NULL AND event_ts < {asof_ts}),
        per_event AS (SELECT customer_id, {', '.join(aggs)} FROM ev GROUP BY customer_id),
        sess AS (SELECT customer_id, session_key, min(event_ts) AS _start, max(event_ts) AS _end,
                        sum(CAST(event_type IN {pages} AS INTEGER)) AS _pages
                 FROM ev GROUP BY customer_id, session_key),
        per_session AS (SELECT customer_id, {', '.join(sess_aggs)} FROM sess GROUP BY customer_id),
        hours AS (SELECT customer_id, hour(event_ts) AS _h, count(*) AS _c FROM ev GROUP BY ALL),
        peak AS (SELECT customer_id, CAST(arg_max(_h, _c * 100 - _h) AS INTEGER) AS peak_hour
                 FROM hours GROUP BY customer_id),
        j AS (SELECT * FROM per_event LEFT JOIN per_session USING (customer_id) LEFT JOIN peak USING (customer_id))
        SELECT {select} FROM j""")
    count_cols = [c for c in out_cols if c.startswith(("sessions_", "purchases_", "product_views_", "carts_",
                                                       "checkouts_", "email_", "push_"))
                  and not c.endswith("_rate") and c != "sessions_per_week_30d"] + ["distinct_features_30d"]
    sums = ", ".join(f"sum({c})" for c in count_cols)
    row = con.execute(f"SELECT count(*), {sums}, sum(recency_days), sum(tenure_days), "
                      f"sum(revenue_total), sum(revenue_90d), sum(revenue_180d) FROM customer_features").fetchone()
    out = {"as_of": as_of.isoformat(), "rows": int(row[0])}
    out.update({f"sum_{c}": int(v or 0) for c, v in zip(count_cols, row[1:1 + len(count_cols)])})
    rest = row[1 + len(count_cols):]
    out.update({"sum_recency_days": int(rest[0] or 0), "sum_tenure_days": int(rest[1] or 0),
                "sum_revenue_total": round(float(rest[2] or 0), 2), "sum_revenue_90d": round(float(rest[3] or 0), 2),
                "sum_revenue_180d": round(float(rest[4] or 0), 2)})
    return out


# --------------------------------------------------------------------------- 4. journeys / transitions

def transitions(con: duckdb.DuckDBPyConnection, as_of: date | str, window_days: int,
                states_yaml: str | os.PathLike, max_order: int = 3, *,
                inactivity_minutes: int = 30, split_on_session_id: bool = True) -> dict:
    """Journey transition counts of orders 1..``max_order``, overall and per channel.

    Mirrors the journeys job up to ``gold.transition_matrix`` (segment 'all' rows):
    ``customer_events`` restricted to ``event_date`` in ``[as_of - window_days, as_of)`` with a
    customer, sessionized again over the window (seglake re-sessionizes the window, so a
    session crossing the window start is cut there), ``assign_states`` (unmapped events kept
    for the session channel), ``build_journeys`` (scope session|customer, collapse_repeats,
    split after conversions, journey channel = the first non-null lower(channel) of the
    journey's first session), ``journey_transitions`` (from_state of order k = the last k
    states joined with '>', the virtual start where the journey begins; an exit row after a
    journey's last state unless it converted), ``customer_transition_counts`` and
    ``transition_matrix`` with probabilities.

    Difference: seglake's journeys job sessionizes without ``event_key`` (it does not read
    it), so two events of one customer at the same timestamp are ordered arbitrarily there;
    here they are ordered by event_key (see ``tied_events`` in the result).

    Returns:
        journeys, transitions_by_order {k: total count}, first_order {(from, to): count} for
        channel 'all', matrix_rows (segment 'all' rows, channel 'all' and per channel),
        channels, events (window events with a customer), tied_events (of those, events
        sharing customer_id and event_ts with another).
    """
    spec: StateSpec = load_states(states_yaml)
    max_order = int(max_order)
    if not 1 <= max_order <= 5:
        raise ValueError(f"max_order must be between 1 and 5, got {max_order}")
    as_of = _as_date(as_of)
    start = as_of - timedelta(days=int(window_days))
    window = (f"customer_id IS NOT NULL AND event_date >= DATE {_q(start.isoformat())} "
              f"AND event_date < DATE {_q(as_of.isoformat())}")
    state = _case_map("event_type", spec.event_states)
    con.execute("CREATE OR REPLACE TABLE journey_events AS SELECT *, " + state + " AS state FROM ("
                + _sessionize_sql(f"(SELECT {', '.join(_JOURNEY_INPUT)} FROM customer_events WHERE {window})",
                                  int(inactivity_minutes), split_on_session_id) + ")")

    base = ["customer_id", "session_key"] if spec.scope == "session" else ["customer_id"]
    part = ", ".join(base)
    order = "ORDER BY event_ts, session_seq, event_seq"
    collapse = ""
    if spec.collapse_repeats:
        collapse = (f"m AS (SELECT * EXCLUDE (_repeat) FROM (SELECT *, coalesce(lag(state) OVER "
                    f"(PARTITION BY {part} {order}) = state, false) AS _repeat FROM m0) WHERE NOT _repeat),")
    else:
        collapse = "m AS (SELECT * FROM m0),"
    wj = f"PARTITION BY {part}, journey_part {order}"
    lags = ", ".join(f"lag(state, {j}) OVER ({wj}) AS _lag{j}" for j in range(1, max_order + 1))
    key = "concat_ws('#', " + ", ".join(f"CAST({c} AS VARCHAR)" for c in base) + ", CAST(journey_part AS VARCHAR))"
    con.execute(f"""
        CREATE OR REPLACE TABLE journeys AS
        WITH ch AS (
            SELECT *, first_value(lower(channel) IGNORE NULLS) OVER (PARTITION BY customer_id, session_key {order}
                      ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS _session_channel
            FROM journey_events),
        m0 AS (SELECT * FROM ch WHERE state IS NOT NULL),
        {collapse}
        p AS (SELECT *, CAST(coalesce(sum(CASE WHEN state = {_q(spec.conversion)} THEN 1 ELSE 0 END) OVER
                  (PARTITION BY {part} {order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS INTEGER)
                  AS journey_part
              FROM m)
        SELECT * EXCLUDE (_session_channel), {key} AS journey_key,
               row_number() OVER ({wj}) AS journey_pos,
               lead(state) OVER ({wj}) IS NULL AS is_last,
               coalesce(first_value(_session_channel IGNORE NULLS) OVER ({wj}
                        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING), {_q(UNKNOWN_CHANNEL)})
                   AS journey_channel,
               {lags}
        FROM p""")

    def h(j: int) -> str:
        if j == 0:
            return "state"
        return (f"CASE WHEN journey_pos - {j} = 0 THEN {_q(spec.start)} "
                f"WHEN journey_pos - {j} > 0 THEN _lag{j} END")

    def history(lo: int, hi: int) -> str:
        return "concat_ws(" + _q(PATH_SEP) + ", " + ", ".join(h(j) for j in range(hi, lo - 1, -1)) + ")"

    rows = []
    for k in range(1, max_order + 1):
        rows.append(f"{{'order': {k}, 'from_state': {history(1, k)}, 'to_state': state}}")
        rows.append(f"CASE WHEN is_last AND state <> {_q(spec.conversion)} THEN "
                    f"{{'order': {k}, 'from_state': {history(0, k - 1)}, 'to_state': {_q(spec.exit)}}} END")
    con.execute(f"""
        CREATE OR REPLACE TABLE journey_transitions AS
        SELECT customer_id, journey_key, channel, t."order" AS "order", t.from_state, t.to_state
        FROM (SELECT customer_id, journey_key, journey_channel AS channel,
                     unnest(list_filter([{', '.join(rows)}], lambda x: x IS NOT NULL)) AS t
              FROM journeys)""")
    con.execute("""
        CREATE OR REPLACE TABLE customer_transition_counts AS
        SELECT customer_id, channel, "order", from_state, to_state, count(*) AS count
        FROM journey_transitions GROUP BY ALL""")
    con.execute(f"""
        CREATE OR REPLACE TABLE transition_matrix AS
        WITH by_channel AS (SELECT "order", channel, from_state, to_state, sum(count) AS count
                            FROM customer_transition_counts GROUP BY ALL),
        overall AS (SELECT "order", {_q(ALL)} AS channel, from_state, to_state, sum(count) AS count
                    FROM by_channel GROUP BY "order", from_state, to_state),
        u AS (SELECT "order", {_q(ALL)} AS segment, channel, from_state, to_state, CAST(count AS BIGINT) AS count
              FROM (SELECT * FROM overall UNION ALL BY NAME SELECT * FROM by_channel))
        SELECT *, count / sum(count) OVER (PARTITION BY "order", segment, channel, from_state) AS probability
        FROM u""")

    first = {(f, t): int(n) for f, t, n in con.execute(
        f"SELECT from_state, to_state, count FROM transition_matrix WHERE \"order\" = 1 AND channel = {_q(ALL)} "
        "ORDER BY 1, 2").fetchall()}
    by_order = {int(k): int(n) for k, n in con.execute(
        f"SELECT \"order\", sum(count) FROM transition_matrix WHERE channel = {_q(ALL)} GROUP BY 1 ORDER BY 1"
    ).fetchall()}
    n_events, tied = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE n > 1) "
        "FROM (SELECT count(*) OVER (PARTITION BY customer_id, event_ts) AS n FROM journey_events)").fetchone()
    return {
        "window": f"{start}..{as_of}",
        "events": int(n_events),
        "tied_events": int(tied),
        "journeys": _count(con, "SELECT count(DISTINCT journey_key) FROM journeys"),
        "transitions_by_order": by_order,
        "first_order": first,
        "matrix_rows": _count(con, "SELECT count(*) FROM transition_matrix"),
        "channels": _count(con, f"SELECT count(DISTINCT channel) FROM transition_matrix WHERE channel <> {_q(ALL)}"),
    }
