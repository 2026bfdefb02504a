"""The files destination: audience extracts per segment for upload tools (CSV and Parquet + manifest).

For every as-of date with a segment change to deliver, the destination writes the whole audience
of that as-of (not only the changes: upload tools replace an audience) under
``<path>/as_of=<D>/``: one ``<segment>.csv`` and one ``<segment>.parquet`` per segment
(customer_id, segment, as_of_date; sorted by customer_id), and ``manifest.json`` with the as-of,
the run id, per segment its row count and per file its size and SHA-256, and how many customers
were left out (consent withdrawn, unsubscribed from the destination's channel).

Atomic and idempotent: the folder is built under ``<path>/.staging-<D>-<run>`` and swapped in
with two renames; a rerun rebuilds the same content. Only the newest ``keep_as_of`` folders are
kept. :meth:`FilesDestination.erase` rewrites every kept extract without the given customers.
Local paths only (the manifest's checksums read the files back); an object-store upload tool
reads from a local staging disk anyway.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config, join
from seglake.core.contracts import SEGMENT_MEMBERSHIP
from seglake.stages.export.base import OUTCOME_DDL, DestinationConfigError
from seglake.stages.export.settings import COMMON_KEYS, Policies, unknown_key

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")
OWN_KEYS = ("path", "formats", "keep_as_of")


class FilesDestination:
    kind = "files"

    def __init__(self, name: str, settings: dict, cfg: Config, policies: Policies | None = None,
                 segments: tuple[str, ...] | None = None):
        self.name = name
        self.cfg = cfg
        self.policies = policies or Policies()
        self.segments = segments
        self.channel = settings.get("channel") or "files"
        problem = unknown_key(settings, OWN_KEYS + COMMON_KEYS, listed=OWN_KEYS)
        if problem:
            raise DestinationConfigError(f"destination '{name}' (files): {problem}")
        path = settings.get("path") or join(cfg.lakehouse, "_exports", name)
        if "://" in str(path) and not str(path).startswith("file:"):
            raise DestinationConfigError(f"destination '{name}' (files): path must be a local folder, got {path!r}")
        self.path = Path(str(path).removeprefix("file:"))
        formats = settings.get("formats") or list(FORMATS)
        if not isinstance(formats, list) or set(formats) - set(FORMATS) or not formats:
            raise DestinationConfigError(f"destination '{name}' (files): formats must be a list of "
                                         f"{' and '.join(FORMATS)}, got {formats!r}")
        self.formats = tuple(f for f in FORMATS if f in formats)
        keep = settings.get("keep_as_of", 7)
        if not isinstance(keep, int) or keep < 1:
            raise DestinationConfigError(f"destination '{name}' (files): keep_as_of must be a whole number >= 1, "
                                         f"got {keep!r}")
        self.keep = keep

    # ------------------------------------------------------------------ delivery
    def deliver(self, spark: SparkSession, messages: DataFrame, run_id: str) -> DataFrame:
        # the as-of dates of the segment changes (a few per run: bounded by days, not customers)
        days = sorted({date.fromisoformat(r["version"]) for r in
                       messages.where(F.col("kind") == "segment").select("version").distinct().collect()})
        written = {}
        for d in days:
            written[d] = self._write_extract(spark, d, run_id)
        self._prune()
        response = "; ".join(f"as_of={d}: {sum(s['rows'] for s in m['segments'].values())} rows"
                             for d, m in written.items()) or "nothing to extract (no segment changes)"
        return messages.select("idempotency_key", F.lit("delivered").alias("status"),
                               (F.col("attempts") + 1).cast("int").alias("attempts"),
                               F.lit(response[:500]).alias("response"),
                               F.lit(None).cast("string").alias("error")).select(
            *[F.col(c.split()[0]) for c in OUTCOME_DDL.split(", ")])

    def audience(self, spark: SparkSession, as_of: date, exclude: list[str] = ()) -> DataFrame:
        """customer_id, segment, as_of_date of the members at ``as_of`` who may be sent to."""
        from seglake.stages.export.outbox import suppressed_customers

        members = tables.read(spark, self.cfg, SEGMENT_MEMBERSHIP).where(F.col("as_of_date") == F.lit(as_of))
        if self.segments is not None:
            members = members.where(F.col("segment").isin(*self.segments) if self.segments else F.lit(False))
        members = members.select("customer_id", "segment", "as_of_date")
        now = datetime.now(timezone.utc)
        blocked = (suppressed_customers(spark, self.cfg, self.policies, now)
                   .where(F.col("channel").isNull() | (F.col("channel") == self.channel)).select("customer_id"))
        if exclude:
            blocked = blocked.unionByName(spark.createDataFrame([(c,) for c in exclude], "customer_id STRING"))
        return members.join(F.broadcast(blocked.distinct()), "customer_id", "left_anti")

    def _write_extract(self, spark: SparkSession, as_of: date, run_id: str, exclude: list[str] = ()) -> dict:
        self.path.mkdir(parents=True, exist_ok=True)
        staging = self.path / f".staging-{as_of}-{run_id}"
        shutil.rmtree(staging, ignore_errors=True)
        aud = self.audience(spark, as_of, exclude).localCheckpoint()
        # one row per segment (bounded by segments.yaml)
        counts = {r["segment"]: int(r["n"]) for r in aud.groupBy("segment").agg(F.count(F.lit(1)).alias("n")).collect()}
        files: dict[str, dict] = {s: {} for s in counts}
        for fmt in self.formats:
            spark_dir = staging / f"_{fmt}"
            # one task per segment -> one file per segment folder, rows sorted by customer_id
            writer = (aud.repartition("segment").sortWithinPartitions("segment", "customer_id")
                      .write.partitionBy("segment").mode("overwrite"))
            if fmt == "csv":
                writer.option("header", "true").csv(str(spark_dir))
            else:
                writer.parquet(str(spark_dir))
            for seg in counts:
                parts = sorted((spark_dir / f"segment={seg}").glob(f"part-*.{fmt}" if fmt == "parquet" else "part-*.csv"))
                if len(parts) != 1:
                    raise RuntimeError(f"files destination '{self.name}': expected one {fmt} file for segment "
                                       f"{seg}, Spark wrote {len(parts)}")
                target = staging / f"{seg}.{fmt}"
                os.replace(parts[0], target)
                files[seg][fmt] = {"file": target.name, "bytes": target.stat().st_size, "sha256": _sha256(target)}
            shutil.rmtree(spark_dir)
        manifest = {"destination": self.name, "as_of": str(as_of), "run_id": run_id,
                    "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "columns": ["customer_id", "segment", "as_of_date"],
                    "segments": {s: {"rows": counts[s], "files": files[s]} for s in sorted(counts)}}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        self._swap(staging, self.path / f"as_of={as_of}", run_id)
        log.info("export: %s: as_of=%s: %d segment(s), %d row(s) -> %s", self.name, as_of, len(counts),
                 sum(counts.values()), self.path / f"as_of={as_of}")
        return manifest

    @staticmethod
    def _swap(staging: Path, final: Path, run_id: str) -> None:
        old = final.parent / f".old-{final.name}-{run_id}"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)

    def extracts(self) -> list[date]:
        """The as-of dates with an extract, oldest first."""
        if not self.path.exists():
            return []
        return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in self.path.glob("as_of=*")
                      if (p / "manifest.json").exists())

    def _prune(self) -> None:
        for d in self.extracts()[:-self.keep]:
            shutil.rmtree(self.path / f"as_of={d}")
        for stale in list(self.path.glob(".staging-*")) + list(self.path.glob(".old-*")):
            shutil.rmtree(stale, ignore_errors=True)   # left by a run killed mid-swap

    # ------------------------------------------------------------------ erasure
    def erase(self, spark: SparkSession, customer_ids: list[str], run_id: str) -> dict:
        """Rewrite every kept extract without ``customer_ids`` (rebuilt from membership, minus them)."""
        rewritten = 0
        for d in self.extracts():
            if tables.exists(spark, self.cfg, SEGMENT_MEMBERSHIP):
                self._write_extract(spark, d, f"{run_id}-erase", exclude=list(customer_ids))
                rewritten += 1
        return {"extracts_rewritten": rewritten}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
