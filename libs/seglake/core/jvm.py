"""JVM dependencies: Maven coordinates, and a local cache of the resolved jars.

Locally, ``ensure_jars()`` resolves the coordinates (with their transitive runtime
dependencies) from Maven Central once, using Maven, into a cache directory; the
SparkSession factory then passes the cached files as ``spark.jars`` so later runs need
no network. On a cluster, pass the same coordinates with ``--packages`` (see
``packages_arg()``), or ship the cached jars with ``--jars``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DELTA_VERSION = "4.4.0"
#: Maven coordinates needed on the JVM side (group:artifact:version).
#: delta-spark_4.1_2.13 is the Delta build for the Spark 4.1 line (pyspark 4.1.x).
#: GraphFrames' JVM artifacts are not reachable from this project's build machines
#: (see README, "GraphFrames"); identity resolution runs its own connected-components
#: implementation and uses GraphFrames only when its jar is configured.
COORDINATES: tuple[str, ...] = (f"io.delta:delta-spark_4.1_2.13:{DELTA_VERSION}",)
GRAPHFRAMES_COORDINATE = "io.graphframes:graphframes-spark4_2.13:0.12.3"

# Jars that Spark's own distribution already ships; copying them again only adds
# classpath duplicates.
_EXCLUDE_GROUPS = "org.apache.spark,org.scala-lang"

#: Spark's Kafka source for Structured Streaming (`seglake run stream`). 4.1.3, not 4.1.1:
#: 4.1.1's source fails with an NPE in KafkaMicroBatchStream.metrics after a kill mid-batch.
KAFKA_SOURCE_VERSION = "4.1.3"
KAFKA_SOURCE: tuple[str, ...] = (f"org.apache.spark:spark-sql-kafka-0-10_2.13:{KAFKA_SOURCE_VERSION}",)
#: its token provider 4.1.3 is not on every Maven mirror (not on this project's build machines):
#: pinned to 4.1.1, which works with the 4.1.3 source (a direct dependency would not override it)
KAFKA_SOURCE_PINS: tuple[str, ...] = ("org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.1.1",)
# what Spark's distribution ships of the source's dependencies (the source itself is
# org.apache.spark, so that group cannot be excluded wholesale)
_KAFKA_EXCLUDE_GROUPS = "org.scala-lang,org.apache.hadoop,org.lz4,org.xerial.snappy,org.slf4j,com.github.luben"
_KAFKA_EXCLUDE_ARTIFACTS = "spark-tags_2.13"


#: the PostgreSQL JDBC driver, for the ``postgres`` activation destination (Spark's JDBC writer and the
#: destination's own transaction on the driver). Locally it is resolved once into the jar cache and put on
#: every local session's classpath; on a cluster pass it with ``--packages`` (``packages_arg(POSTGRES_JDBC)``).
POSTGRES_JDBC: tuple[str, ...] = ("org.postgresql:postgresql:42.7.8",)


class JarResolutionError(RuntimeError):
    """Raised when the JVM dependencies cannot be resolved or found."""


def coordinates(extra=()) -> tuple[str, ...]:
    """:data:`COORDINATES` plus ``extra`` (``spark.extra_packages``, e.g. hadoop-aws for ``s3a://``).

    Raises:
        ConfigError (a ValueError): an entry is not ``group:artifact:version``.
    """
    extra = tuple(str(c).strip() for c in (extra or ()))
    bad = [c for c in extra if len(c.split(":")) != 3 or not all(c.split(":"))]
    if bad:
        from seglake.core.config import ConfigError  # a ValueError: the CLI exits 2 with this sentence
        raise ConfigError(f"spark.extra_packages: {', '.join(map(repr, bad))} is not a Maven coordinate "
                         "group:artifact:version (e.g. org.apache.hadoop:hadoop-aws:3.4.2)")
    return COORDINATES + tuple(c for c in dict.fromkeys(extra) if c not in COORDINATES)


def packages_arg(coordinates: tuple[str, ...] = COORDINATES) -> str:
    """The value for ``spark-submit --packages``."""
    return ",".join(coordinates)


def cache_root() -> Path:
    """Where resolved jars are cached: ``$SEGLAKE_JARS_CACHE`` or ``~/.cache/seglake/jars``."""
    env = os.environ.get("SEGLAKE_JARS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "seglake" / "jars"


def _variant(exclude_groups: str, managed: tuple[str, ...], exclude_artifacts: str) -> str:
    """The part of the cache key beyond the coordinates ('' for the default Delta set)."""
    if exclude_groups == _EXCLUDE_GROUPS and not managed and not exclude_artifacts:
        return ""
    return f"|{exclude_groups}|{','.join(managed)}|{exclude_artifacts}"


def jar_dir(coordinates: tuple[str, ...] = COORDINATES, variant: str = "") -> Path:
    key = hashlib.sha256(("\n".join(sorted(coordinates)) + variant).encode()).hexdigest()[:12]
    return cache_root() / key


def _dependency(coord: str) -> str:
    group, artifact, version = coord.split(":")
    return (f"<dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>")


def _pom(coordinates: tuple[str, ...], managed: tuple[str, ...] = ()) -> str:
    deps = "".join(_dependency(c) for c in coordinates)
    pinned = ("<dependencyManagement><dependencies>" + "".join(_dependency(c) for c in managed)
              + "</dependencies></dependencyManagement>") if managed else ""
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>seglake</groupId><artifactId>seglake-jvm-deps</artifactId><version>1</version>"
        f"{pinned}<dependencies>{deps}</dependencies></project>"
    )


def cached_jars(coordinates: tuple[str, ...] = COORDINATES, variant: str = "") -> list[Path] | None:
    """The cached jar files, or None when the cache is not complete."""
    target = jar_dir(coordinates, variant)
    if not (target / ".complete").exists():
        return None
    return sorted(target.glob("*.jar"))


def ensure_jars(coordinates: tuple[str, ...] = COORDINATES, *, exclude_groups: str = _EXCLUDE_GROUPS,
                managed: tuple[str, ...] = (), exclude_artifacts: str = "") -> list[Path]:
    """Return the local jar files for ``coordinates``, resolving them once with Maven.

    ``exclude_groups`` / ``exclude_artifacts`` (comma-separated) are left out of the copy
    (by default what Spark's distribution ships: Spark and Scala); ``managed`` pins versions
    of transitive dependencies (Maven ``dependencyManagement``).

    Raises JarResolutionError with Maven's own explanation when resolution fails.
    """
    variant = _variant(exclude_groups, managed, exclude_artifacts)
    jars = cached_jars(coordinates, variant)
    if jars:
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarResolutionError(
            "Maven ('mvn') is needed once to download the JVM jars "
            f"({packages_arg(coordinates)}) into {jar_dir(coordinates, variant)}; install Maven "
            "(apt-get install maven) or set SEGLAKE_JARS_CACHE to a folder holding them."
        )
    target = jar_dir(coordinates, variant)
    staging = Path(tempfile.mkdtemp(prefix="seglake-jars-"))
    log.info("Resolving JVM dependencies %s from Maven Central (once) ...", packages_arg(coordinates))
    (staging / "pom.xml").write_text(_pom(coordinates, managed))
    cmd = [mvn, "-B", "-q", "-f", str(staging / "pom.xml"), "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'jars'}"]
    if exclude_groups:
        cmd.append(f"-DexcludeGroupIds={exclude_groups}")
    if exclude_artifacts:
        cmd.append(f"-DexcludeArtifactIds={exclude_artifacts}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        shutil.rmtree(staging, ignore_errors=True)
        raise JarResolutionError(
            f"Could not resolve {packages_arg(coordinates)} with Maven:\n{detail}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(staging / "jars"), str(target))
    (target / ".complete").write_text(packages_arg(coordinates) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    jars = sorted(target.glob("*.jar"))
    log.info("Cached %d jars in %s", len(jars), target)
    return jars


def kafka_source_jars() -> list[Path]:
    """Spark's Kafka source and its own dependencies (kafka-clients, commons-pool2, the token
    provider), resolved once into the jar cache; every local session puts them on its classpath."""
    return ensure_jars(KAFKA_SOURCE, exclude_groups=_KAFKA_EXCLUDE_GROUPS, managed=KAFKA_SOURCE_PINS,
                       exclude_artifacts=_KAFKA_EXCLUDE_ARTIFACTS)


def postgres_jdbc_jars() -> list[Path]:
    """The PostgreSQL JDBC driver (and its one dependency, checker-qual), resolved once into the jar
    cache; every local session puts it on its classpath."""
    return ensure_jars(POSTGRES_JDBC)


def main() -> int:
    """``python -m seglake.core.jvm``: resolve and cache the jars, print where they are."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        jars = ensure_jars()
    except JarResolutionError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{len(jars)} jars cached in {jar_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
