"""Rendering of the simulation into raw records (built-in Spark column functions only).

:func:`sim_to_truth` turns simulation rows into readable per-event truth (identifier strings,
canonical names); :func:`truth_to_records` renders every raw record to write: valid events,
planted duplicates and malformed records, with raw spelling variants, timestamp formats and
offsets chosen by hash-based randoms (``xxhash64`` of seed, purpose and event), so the result
does not depend on partitioning. The small column helpers (:func:`_arr`, :func:`_h`, ...) are
shared with the ground-truth tables.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from seglake.core.contracts import RAW_FIELDS
from seglake.devtools.generate.model import (
    ARCH_NAMES, BAD_TS, CATEGORIES, CHANNELS, CURRENCIES, CURRENCY_SPELLINGS, DEVICE_KINDS,
    DEVICE_SPELLINGS, EVENT_ALIASES, EVENT_TYPES, EXACT_DUP_SHARE, EXPERIMENT, FEATURES,
    KIOSK_BASE, MALFORMED_KINDS, MALFORMED_SHARE, MISSING_DURATION_SHARE, NO_EVENT_ID_SHARE,
    NOID_DUP_SHARE, NULL_DEVICE_TYPE_SHARE, OFFSETS, PRODUCTS_PER_CATEGORY, RESENT_SHARE,
    SHARED_DEVICE_PREFIX, SOURCES, SRC, STATES, UNKNOWN_TYPES,
)


def _arr(values) -> Column:
    return F.array(*[F.lit(v) for v in values])


def _pick_col(values, bucket: Column) -> Column:
    """``values[bucket % len(values)]`` as a column."""
    return F.element_at(_arr(values), (F.pmod(bucket, F.lit(len(values))) + 1).cast("int"))


def _h(seed: int, purpose: str, *cols: Column) -> Column:
    """Deterministic hash bucket 0..9999 of (seed, purpose, cols)."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(purpose), *cols), F.lit(10_000)).cast("int")


def _hexid(seed: int, prefix: str, *cols: Column, length: int = 24) -> Column:
    return F.concat(F.lit(prefix), F.substring(
        F.sha2(F.concat_ws(":", F.lit(str(seed)), F.lit(prefix), *[c.cast("string") for c in cols]), 256),
        1, length))


def sim_to_truth(sim: DataFrame, seed: int) -> DataFrame:
    """Readable per-event truth (identifier strings, canonical names) from simulation rows.

    Args:
        sim: rows of the simulation (``_SIM_SCHEMA``).
        seed: generator seed (identifier hashes depend on it).

    Returns:
        One row per valid event: ``event_uid``, ``person_id``, ``event_id`` (null when the raw
        record carries none), identifier strings as written raw, ``event_type`` (canonical),
        ``ts_ms``, ``event_ts`` (UTC timestamp), ``state``, ``session_no``, ``source``,
        ``channel`` and the numeric columns the renderer needs.
    """
    uid_col = (F.col("pid") * F.lit(1 << 24) + F.col("seq")).alias("event_uid")
    pid = F.col("pid")
    first_names = ("alex", "sam", "maria", "li", "noor", "jan", "ana", "tom", "eva", "raj")
    domains = ("example.com", "mail.example.org", "inbox.example.net")
    return sim.select(
        uid_col, "*",
    ).select(
        "event_uid",
        F.format_string("P%08d", pid).alias("person_id"),
        "pid", "seq", "ts_ms",
        F.timestamp_millis(F.col("ts_ms")).alias("event_ts"),
        F.when(_h(seed, "eid", F.col("event_uid")) >= NO_EVENT_ID_SHARE,
               _hexid(seed, "evt_", F.col("event_uid"))).alias("event_id"),
        F.when(F.col("uid"), _hexid(seed, "usr_", pid, length=20)).alias("user_id"),
        F.when(F.col("anon") >= 0, _hexid(seed, "anon_", pid, F.col("anon"))).alias("anonymous_id"),
        F.when(F.col("dev") >= KIOSK_BASE,
               F.format_string(SHARED_DEVICE_PREFIX + "%03d", F.col("dev") - KIOSK_BASE))
        .when(F.col("dev") >= 0, _hexid(seed, "dev_", pid, F.col("dev"))).alias("device_id"),
        F.when(F.col("email") >= 0, F.format_string(
            "%s.%d@%s", _pick_col(first_names, pid), pid * 3 + F.col("email"),
            _pick_col(domains, F.xxhash64(F.lit(seed), pid)))).alias("email"),
        F.when(F.col("phone"), F.format_string("+1%d", pid + F.lit(2_000_000_000))).alias("phone"),
        F.element_at(_arr(EVENT_TYPES), F.col("etype") + 1).alias("event_type"),
        "etype",
        F.when(F.col("state") >= 0, F.element_at(_arr(STATES), F.col("state") + 1)).alias("state"),
        F.col("sess").alias("session_no"),
        F.element_at(_arr(SOURCES), F.col("src") + 1).alias("source"),
        F.when(F.col("chan") >= 0, F.element_at(_arr(CHANNELS), F.col("chan") + 1)).alias("channel"),
        "chan", "src", "dev_kind", "product", "qty", "price_c", "revenue_c", "dur_ms", "scroll",
        "feature", "variant", "consent", "currency", "has_uid", "exp_flags", "exp_extra_c", "results",
        "churn_ms", "decline_ms",
        F.element_at(_arr(ARCH_NAMES), F.col("arch") + 1).alias("archetype"),
    )


def _fmt_ts(ts_ms: Column, fmt: Column, offset_min: Column, offset_txt: Column) -> Column:
    """Render an instant in one of five raw formats (0 Z, 1 offset+millis, 2 naive UTC,
    3 offset without colon, 4 epoch millis). Session time zone must be UTC."""
    utc = F.timestamp_millis(ts_ms)
    local = F.timestamp_millis(ts_ms + offset_min * F.lit(60_000))
    return (F.when(fmt == 0, F.concat(F.date_format(utc, "yyyy-MM-dd'T'HH:mm:ss"), F.lit("Z")))
            .when(fmt == 1, F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss.SSS"), offset_txt))
            .when(fmt == 2, F.date_format(utc, "yyyy-MM-dd HH:mm:ss"))
            .when(fmt == 3, F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss"),
                                     F.regexp_replace(offset_txt, ":", "")))
            .otherwise(ts_ms.cast("string")))


def _money(cents: Column) -> Column:
    return F.when(cents >= 0, (cents / F.lit(100)).cast("decimal(14,2)").cast("string"))


def truth_to_records(truth: DataFrame, seed: int) -> DataFrame:
    """Every raw record to write: valid events, planted duplicates and malformed records.

    Args:
        truth: output of :func:`sim_to_truth`.
        seed: generator seed.

    Returns:
        The raw contract fields as strings plus typed JSON helpers and bookkeeping columns:
        ``_kind`` (valid | exact_duplicate | resent | no_event_id_duplicate | malformed),
        ``_defect`` (malformed kind or null), ``_fmt`` (json|csv|parquet), ``_day``
        (landing folder), ``_line`` (the JSON line for json records) and ``event_uid``.
    """
    uid = F.col("event_uid")
    has_eid = F.col("event_id").isNotNull()
    hd = _h(seed, "dup", uid)
    dup_kind = (F.when(hd < EXACT_DUP_SHARE, F.lit("exact_duplicate"))
                .when(has_eid & (hd < EXACT_DUP_SHARE + RESENT_SHARE), F.lit("resent"))
                .when(~has_eid & (hd < EXACT_DUP_SHARE + NOID_DUP_SHARE), F.lit("no_event_id_duplicate")))
    mal_kind = F.when(_h(seed, "mal", uid) < MALFORMED_SHARE, F.lit("malformed"))
    df = truth.withColumn("_kind", F.explode(F.filter(F.array(F.lit("valid"), dup_kind, mal_kind),
                                                      lambda x: x.isNotNull())))
    kind = F.col("_kind")
    # exact duplicates are rendered exactly like their original
    ck = F.when(kind.isin("valid", "exact_duplicate"), F.lit("orig")).otherwise(kind)
    df = df.withColumn("_defect", F.when(kind == "malformed", _pick_col(MALFORMED_KINDS, _h(seed, "mk", uid))))
    defect = F.col("_defect")
    hf = _h(seed, "fmt", uid, ck)
    df = df.withColumn("_fmt", F.when(defect == "broken_json", F.lit("json"))
                       .when(hf < 4000, F.lit("json")).when(hf < 7000, F.lit("csv")).otherwise(F.lit("parquet")))
    # timestamp format: instants with millis only in formats that keep them (1, 4)
    ht = _h(seed, "tsf", uid, ck)
    has_ms = F.pmod(F.col("ts_ms"), F.lit(1000)) != 0
    tsf = F.when(has_ms, F.when(ht < 6000, F.lit(1)).otherwise(F.lit(4))).otherwise(
        F.when(ht < 3000, F.lit(0)).when(ht < 5000, F.lit(1)).when(ht < 7000, F.lit(2))
        .when(ht < 8500, F.lit(3)).otherwise(F.lit(4)))
    ho = _h(seed, "off", uid, ck)
    off_txt = _pick_col(OFFSETS, ho)
    off_min = (F.substring(off_txt, 1, 1).eqNullSafe("-").cast("int") * -2 + 1) * (
        F.substring(off_txt, 2, 2).cast("int") * 60 + F.substring(off_txt, 5, 2).cast("int"))
    df = df.withColumn("_tsf", tsf)
    ts_txt = _fmt_ts(F.col("ts_ms"), F.col("_tsf"), off_min, off_txt)
    future = F.concat(F.lit("2099"), F.substring(F.date_format(F.col("event_ts"), "yyyy-MM-dd'T'HH:mm:ss"), 5, 15),
                      F.lit("Z"))
    event_ts = (F.when(defect == "unparseable_ts", _pick_col(BAD_TS, _h(seed, "bad", uid)))
                .when(defect == "future_ts", future).otherwise(ts_txt))
    # event type spelling (same for every copy of an event)
    hv = _h(seed, "etv", uid)
    canonical = F.col("event_type")
    alias = F.element_at(F.create_map(*[F.lit(x) for kv in EVENT_ALIASES.items() for x in kv]), canonical)
    etype = (F.when(defect == "unknown_event_type", _pick_col(UNKNOWN_TYPES, _h(seed, "unk", uid)))
             .when(hv < 8000, canonical).when(hv < 8700, F.upper(canonical))
             .when(hv < 9200, F.initcap(canonical)).otherwise(F.coalesce(alias, canonical)))
    no_ids = defect == "missing_identifiers"

    def ident(name: str) -> Column:
        return F.when(~no_ids | no_ids.isNull(), F.col(name))

    price = _money(F.col("price_c"))
    neg_price = F.concat(F.lit("-"), F.coalesce(price, _money(F.lit(100) + _h(seed, "np", uid))))
    price = F.when(defect == "negative_price", neg_price).otherwise(price)
    dev_spell = F.coalesce(*[
        F.when(F.col("dev_kind") == i, _pick_col(DEVICE_SPELLINGS[k], _h(seed, "dvs", uid)))
        for i, k in enumerate(DEVICE_KINDS)])
    cur_spell = F.coalesce(*[
        F.when(F.col("currency") == i, _pick_col(CURRENCY_SPELLINGS[c], _h(seed, "cur", uid)))
        for i, c in enumerate(CURRENCIES)])
    chan = F.col("channel")
    utm_source = (F.when(chan == "paid_search", F.lit("google")).when(chan == "social", F.lit("facebook"))
                  .when(chan == "email", F.lit("newsletter")).when(chan == "referral", F.lit("partner_blog")))
    utm_medium = (F.when(chan == "paid_search", F.lit("cpc")).when(chan == "social", F.lit("social"))
                  .when(chan == "email", F.lit("email")).when(chan == "referral", F.lit("referral")))
    utm_campaign = (F.when(chan == "paid_search", F.lit("autumn_sale")).when(chan == "social", F.lit("fall_promo"))
                    .when(chan == "email", F.lit("oct_newsletter")))
    category = F.when(F.col("product") >= 0, F.element_at(
        _arr(CATEGORIES), (F.col("product") / F.lit(PRODUCTS_PER_CATEGORY)).cast("int") + 1))
    web_sess = F.col("src").isin(SRC["web"], SRC["app"])
    page_url = F.when(F.col("src") == SRC["web"], F.concat(F.lit("https://shop.example.com"), F.coalesce(
        F.when(F.col("event_type") == "page_view", F.concat(F.lit("/c/"), F.coalesce(category, F.lit("home")))),
        F.when(F.col("event_type") == "product_view", F.format_string("/p/%05d", F.col("product"))),
        F.when(F.col("event_type") == "search", F.lit("/search")),
        F.when(F.col("event_type").isin("add_to_cart", "remove_from_cart"), F.lit("/cart")),
        F.when(F.col("event_type") == "checkout_start", F.lit("/checkout")),
        F.when(F.col("event_type") == "purchase", F.lit("/checkout/confirm")),
        F.lit("/"))))
    variant = F.element_at(_arr(("A", "B")), F.col("variant") + 1)
    results = F.col("results").cast("string")   # a search's result count ("0": a failed search)
    props = (F.when(F.col("feature") >= 0, F.create_map(F.lit("feature"), F.element_at(_arr(FEATURES), F.col("feature") + 1)))
             .when((F.col("variant") >= 0) & (F.col("results") >= 0),
                   F.create_map(F.lit("experiment"), F.lit(EXPERIMENT), F.lit("variant"), variant, F.lit("results"), results))
             .when(F.col("variant") >= 0, F.create_map(F.lit("experiment"), F.lit(EXPERIMENT), F.lit("variant"), variant))
             .when(F.col("results") >= 0, F.create_map(F.lit("results"), results)))
    duration = F.when((F.col("dur_ms") >= 0) & (_h(seed, "dur", uid) >= MISSING_DURATION_SHARE), F.col("dur_ms"))
    day_shift = F.when(kind == "resent", F.lit(1) + F.pmod(_h(seed, "rsd", uid), F.lit(2))).otherwise(F.lit(0))
    mal_eid = _hexid(seed, "evm_", uid)
    out = df.select(
        "event_uid", "_kind", "_defect", "_fmt", "_tsf",
        F.date_format(F.date_add(F.to_date(F.col("event_ts")), day_shift), "yyyy-MM-dd").alias("_day"),
        F.when(defect.isNotNull(), mal_eid).otherwise(F.col("event_id")).alias("event_id"),
        ident("user_id").alias("user_id"), ident("anonymous_id").alias("anonymous_id"),
        ident("device_id").alias("device_id"), ident("email").alias("email"), ident("phone").alias("phone"),
        etype.alias("event_type"), event_ts.alias("event_ts"), F.col("source"),
        F.when(web_sess & (_h(seed, "sid", F.col("pid"), F.col("session_no")) >= 1000),
               _hexid(seed, "s_", F.col("pid"), F.col("session_no"), length=16)).alias("session_id"),
        page_url.alias("page_url"),
        F.when(F.col("product") >= 0, F.format_string("SKU-%05d", F.col("product"))).alias("product_id"),
        category.alias("category"),
        price.alias("price"),
        F.when(F.col("qty") >= 0, F.col("qty").cast("string")).alias("quantity"),
        _money(F.col("revenue_c")).alias("revenue"),
        F.when((F.col("price_c") >= 0) | (F.col("revenue_c") >= 0) | (defect == "negative_price"),
               cur_spell).alias("currency"),
        F.when(_h(seed, "dvn", uid) >= NULL_DEVICE_TYPE_SHARE, dev_spell).alias("device_type"),
        utm_source.alias("utm_source"), utm_medium.alias("utm_medium"), utm_campaign.alias("utm_campaign"),
        F.when(_h(seed, "chv", uid) < 800, F.initcap(chan)).otherwise(chan).alias("channel"),
        duration.cast("string").alias("duration_ms"),
        F.when(F.col("scroll") >= 0, F.col("scroll").cast("string")).alias("scroll_depth"),
        F.when(F.col("consent"), F.lit("true")).otherwise(F.lit("false")).alias("consent"),
        F.to_json(props).alias("properties"),
        props.alias("_props"),
        F.col("consent").alias("_consent"),
        duration.isNull().alias("_no_duration"),
        F.abs(_h(seed, "cut", uid)).alias("_cut"),
    )
    typed = F.struct(*[
        (F.col(c).cast("double") if c in ("price", "revenue") else
         F.col(c).cast("int") if c in ("quantity", "scroll_depth") else
         F.col(c).cast("long") if c == "duration_ms" else
         F.col("_consent") if c == "consent" else
         F.col("_props") if c == "properties" else F.col(c)).alias(c)
        for c in RAW_FIELDS])
    line = F.to_json(typed)
    line = F.when(F.col("_tsf") == 4, F.regexp_replace(line, '"event_ts":"([0-9]+)"', '"event_ts":$1')).otherwise(line)
    line = F.when(F.col("_defect") == "broken_json",
                  F.substring(line, 1, F.greatest(F.lit(10), (F.length(line) * (F.lit(0.3) + F.col("_cut") / F.lit(16_000))).cast("int"))))\
        .otherwise(line)
    return out.withColumn("_line", F.when(F.col("_fmt") == "json", line)).drop("_props", "_cut")
