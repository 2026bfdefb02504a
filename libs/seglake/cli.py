"""The `seglake` command line.

Exit codes (for schedulers): 0 success; 1 a job failed (message names the job);
2 bad usage or bad configuration; 3 the verb or job is not available in this version;
4 Spark could not start; 5 clean set a bad batch aside (the others were cleaned);
6 another run holds the lease: the same job is running (this run
stopped before changing anything), or erase waited too long for exclusive access to VACUUM.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import date
from pathlib import Path

from seglake import __version__, registry
from seglake.core.config import ENVIRONMENTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_SPARK = 0, 1, 2, 3, 4
EXIT_SET_ASIDE = 5  # clean set aside a bad batch (the others were cleaned)
EXIT_BUSY = 6   # another run holds the lease

log = logging.getLogger("seglake")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=ENVIRONMENTS, default="local",
                        help="configuration overlay: conf/<env>.yaml (default: local; cluster = a standalone or other cluster, master from spark-submit, local paths)")
    parser.add_argument("--conf-dir", default=None, help="configuration folder (default: ./conf)")
    parser.add_argument("--lakehouse", default=None,
                        help="lakehouse root, overriding paths.lakehouse from the config")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seglake", description="Behavioral customer segmentation on Spark + Delta Lake.",
        epilog="Exit codes: 0 ok, 1 job failed, 2 usage/config error, 3 not available yet, 4 Spark did not start, "
               "6 another run holds the lease.")
    parser.add_argument("--version", action="version", version=f"seglake {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser("run", help="run one job, or `all` for the whole chain",
                           description="Run one job of the pipeline (or `all`).")
    jobs = run.add_subparsers(dest="job", metavar="JOB", required=True)
    for name in ("all", *registry.JOBS):
        try:
            module = registry.load(name) if name != "all" else None
            status = ""
        except registry.JobNotAvailable:
            module, status = None, " (not available yet)"
        except Exception as exc:  # noqa: BLE001 - a broken module must not break every verb
            module, status = None, f" (cannot be loaded: {type(exc).__name__}: {exc})"
        help_text = ("the whole chain: " + " -> ".join(registry.PIPELINE)) if name == "all" else \
            ((module.__doc__ or "").strip().splitlines() or [name])[0] + status if module else f"{name}{status}"
        sub = jobs.add_parser(name, help=help_text, description=help_text)
        _common(sub)
        sub.add_argument("--as-of", type=_date, default=None,
                         help="as-of date YYYY-MM-DD (exclusive); default: the day after the last event")
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        if name == "all":
            sub.add_argument("--through", choices=registry.PIPELINE, default=None, metavar="JOB",
                             help="stop after this job of the chain (default: run it to the end)")

    demo = verbs.add_parser("demo", help="generate data and run every stage on the embedded default",
                            description="Generate behavioral data under DIR/_input and build every table under DIR.")
    demo.add_argument("--events", type=_positive_int, default=100_000, help="valid events to generate (default 100000)")
    demo.add_argument("--customers", type=_positive_int, default=None, help="persons (default events/50)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--lakehouse", default="./lakehouse", help="output folder (default ./lakehouse)")
    demo.add_argument("--env", choices=("local",), default="local", help=argparse.SUPPRESS)
    demo.add_argument("--conf-dir", default=None, help="configuration folder (default: ./conf)")
    demo.add_argument("--stream", action="store_true",
                      help="the real-time triggers: history in batch, then the events replayed live through a "
                           "Kafka broker the demo starts and stops (make demo-stream)")
    demo.add_argument("--rate", type=float, default=250.0, help="--stream: events per second replayed (default 250)")
    demo.add_argument("-v", "--verbose", action="store_true")

    gen = verbs.add_parser("generate", help="write synthetic raw events and their ground truth",
                           description="Write raw events under OUT/landing and the planted truth under OUT/ground_truth.")
    gen.add_argument("--events", type=_positive_int, required=True)
    gen.add_argument("--customers", type=_positive_int, default=None, help="persons (default events/50)")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", required=True)
    gen.add_argument("--start-date", type=_date, default=None)
    gen.add_argument("--end-date", type=_date, default=None)
    gen.add_argument("--experiment-b-share", type=float, default=0.5, metavar="SHARE",
                     help="share of persons in variant B of the planted A/B test (default 0.5; "
                          "another value plants a sample-ratio mismatch)")
    gen.add_argument("--conf-dir", default=None)
    gen.add_argument("--env", choices=ENVIRONMENTS, default="local")
    gen.add_argument("-v", "--verbose", action="store_true")

    report = verbs.add_parser("report", help="write the static HTML report of a lakehouse")
    _common(report)
    report.add_argument("--out", default=None, help="report file (default <lakehouse>/report/index.html)")

    stream = verbs.add_parser("stream", help="stream tools: `seglake stream produce` replays raw files into Kafka")
    stream_verbs = stream.add_subparsers(dest="stream_verb", metavar="ACTION", required=True)
    produce = stream_verbs.add_parser(
        "produce", help="replay raw landing files into a Kafka topic in event-time order",
        description="Replay raw files (JSON lines, CSV, Parquet; read as batch ingest reads them) into a "
                    "Kafka topic in event-time order, with chosen shares of late, duplicated and "
                    "malformed records (chosen by a hash: the same on every run).")
    _common(produce)
    produce.add_argument("--from", dest="source", default=None,
                         help="folder of raw files (default <lakehouse>/_input/landing, the demo's)")
    produce.add_argument("--bootstrap-servers", default=None,
                         help="Kafka brokers (default stream.kafka_bootstrap_servers; a local broker: seglake kafka start)")
    produce.add_argument("--topic", default=None, help="topic (default stream.topic); created when missing")
    produce.add_argument("--partitions", type=_positive_int, default=2, help="partitions of a new topic (default 2)")
    produce.add_argument("--rate", type=float, default=0.0, help="messages per second at most (default 0: no cap)")
    produce.add_argument("--late-share", type=float, default=0.0, help="share sent late (default 0)")
    produce.add_argument("--late-seconds", type=int, default=3600, help="how late (default 3600)")
    produce.add_argument("--duplicate-share", type=float, default=0.0, help="share sent twice (default 0)")
    produce.add_argument("--malformed-share", type=float, default=0.0, help="share cut in half (default 0)")
    produce.add_argument("--seed", type=int, default=7)
    produce.add_argument("--live", action="store_true",
                         help="send as live events: event_ts = the time sent, event_id + '-live-<time>'")
    produce.add_argument("--limit", type=_positive_int, default=None, help="send at most this many messages")

    outbox = verbs.add_parser("outbox", help="activation: `seglake outbox status` shows the outbox by destination",
                              description="The activation outbox (ops.outbox) written by `seglake run export`.")
    outbox_verbs = outbox.add_subparsers(dest="outbox_verb", metavar="ACTION", required=True)
    ob_status = outbox_verbs.add_parser("status", help="messages per destination: due, scheduled, delivered, "
                                                      "retrying, dead-lettered, suppressed, capped, cancelled")
    _common(ob_status)

    kafka = verbs.add_parser("kafka", help="start, stop or show a local single-node Kafka broker (KRaft)",
                             description="A real Apache Kafka broker on 127.0.0.1 (jars from Maven Central, "
                                         "cached once), recorded and stopped by its pid.")
    from seglake.devtools import kafka as kafka_broker
    kafka_broker.add_arguments(kafka)

    postgres = verbs.add_parser("postgres", help="start, stop or show a local PostgreSQL 15 server (the CRM destination's)",
                                description="A real PostgreSQL 15 server on 127.0.0.1 (Debian's postgresql-15), "
                                            "database 'seglake', recorded and stopped by its pid.")
    from seglake.devtools import postgres as postgres_server
    postgres_server.add_arguments(postgres)

    setup = verbs.add_parser("setup", help="download and cache the JVM jars (Maven) once",
                             description="Resolve the Delta jars and the configured spark.extra_packages "
                                         "into the local jar cache (once; later runs need no network).")
    setup.add_argument("--env", choices=ENVIRONMENTS, default="local")
    setup.add_argument("--conf-dir", default=None, help="configuration folder (default: ./conf)")
    setup.add_argument("-v", "--verbose", action="store_true")
    return parser


def _config(args, lakehouse: str | None = None):
    from seglake.core.config import load_config
    overrides = {}
    lake = lakehouse or getattr(args, "lakehouse", None)
    if lake:
        overrides["paths"] = {"lakehouse": str(lake)}
    return load_config(args.env, args.conf_dir, overrides or None)


def _spark(cfg, app: str):
    from seglake.core.spark import get_spark
    return get_spark(cfg, app_name=app)


def _job_args(args) -> dict:
    skip = {"verb", "job", "env", "conf_dir", "lakehouse", "verbose", "as_of", "through"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_run(args) -> int:
    from seglake.core import runner
    from seglake.core.context import JobContext
    if args.job != "all":
        registry.load(args.job)  # JobNotAvailable before any Spark start
    cfg = _config(args)
    spark = _spark(cfg, f"seglake-{args.job}")
    ctx = JobContext(spark, cfg, as_of=args.as_of, args=_job_args(args))
    print(f"seglake {args.job}: run {ctx.run_id}, env {cfg.env}, lakehouse {cfg.lakehouse}")
    if args.job == "all":
        started = time.perf_counter()
        chain = list(registry.PIPELINE)
        if args.through:
            chain = chain[: chain.index(args.through) + 1]
        results = runner.run_chain(ctx, chain)
        print(f"\nchain finished in {time.perf_counter() - started:.1f} s\n" + runner.summary_table(results))
        return _set_aside_exit(results)
    result = runner.run_job(ctx, args.job)
    print(f"{args.job} done in {result.seconds:.1f} s ({result.status})")
    for key, value in result.summary.items():
        print(f"  {key}: {value}")
    if result.rows_out:
        print("  rows written: " + ", ".join(f"{t}={n}" for t, n in result.rows_out.items()))
    print(f"  recorded in ops.run_log (run_id {ctx.run_id}, job {args.job})")
    return _set_aside_exit([result])


def _set_aside_exit(results) -> int:
    """EXIT_SET_ASIDE (with one line naming the batches) when clean set a batch aside, else EXIT_OK."""
    aside = sorted({b for r in results if r.status == "set_aside" for b in r.summary.get("set_aside", {})})
    if not aside:
        return EXIT_OK
    print(f"set aside: bronze batch(es) {', '.join(aside)} were not cleaned (too many rejected records, or "
          f"failing the quality suite: the reasons are in ops.clean_set_aside); fix the cause, then: seglake run clean --retry-set-aside", file=sys.stderr)
    return EXIT_SET_ASIDE


def cmd_generate(args) -> int:
    from seglake.devtools import generate
    cfg = _config(args, lakehouse=str(Path(args.out) / "_spark"))
    spark = _spark(cfg, "seglake-generate")
    kwargs = {k: v for k, v in (("start_date", args.start_date), ("end_date", args.end_date)) if v}
    kwargs["experiment_b_share"] = args.experiment_b_share
    started = time.perf_counter()
    counts = generate.generate(spark, args.out, events=args.events,
                               customers=args.customers or max(args.events // 50, 1), seed=args.seed, **kwargs)
    print(f"generated in {time.perf_counter() - started:.1f} s into {Path(args.out).resolve()}")
    print(json.dumps(counts, indent=2, default=str))
    return EXIT_OK


def cmd_demo(args) -> int:
    from seglake.devtools import generate
    from seglake.core import runner
    from seglake.core.context import JobContext
    lake = Path(args.lakehouse).expanduser().resolve()
    cfg = _config(args, lakehouse=str(lake))
    spark = _spark(cfg, "seglake-demo")
    input_dir = lake / "_input"
    customers = args.customers or max(args.events // 50, 1)
    wanted = {"events_requested": args.events, "persons": customers, "seed": args.seed,
              "generator_version": generate.GENERATOR_VERSION}
    counts_file = input_dir / "ground_truth" / "counts.json"
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else None
    # what the input folder holds (a counts.json older than the key: generator version 1)
    held = {k: counts.get(k, 1 if k == "generator_version" else None) for k in wanted} if counts else {}
    if counts and held == wanted:
        print(f"[0] generate    input already in {input_dir} (same size, seed and generator) - reused")
    else:
        if counts:
            differs = ", ".join(f"{k} {held[k]} there, {v} wanted" for k, v in wanted.items() if held[k] != v)
            raise SystemExit(f"error: {input_dir} holds data generated with other settings ({differs}); "
                             "choose an empty --lakehouse folder or delete it first (make clean-lakehouse)")
        print(f"[0] generate    {args.events} events for {customers} persons (seed {args.seed}) ...")
        started = time.perf_counter()
        counts = generate.generate(spark, str(input_dir), events=args.events, customers=customers, seed=args.seed)
        print(f"[0] generate    done in {time.perf_counter() - started:.1f} s  raw_records={counts['raw_records']}")
    ctx = JobContext(spark, cfg)
    started = time.perf_counter()
    if args.stream:
        return _demo_stream(args, spark, ctx, lake)
    results = runner.run_chain(ctx)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s\n" + runner.summary_table(results))
    print(f"\nlakehouse: {lake}")
    for layer in ("bronze", "silver", "gold", "ops"):
        folder = lake / layer
        if folder.exists():
            names = sorted(p.name for p in folder.iterdir() if (p / "_delta_log").exists())
            print(f"  {layer:<7} {', '.join(names)}")
    print(f"  input   {input_dir} (landing/ raw files, ground_truth/ planted truth)")
    for extra, what in (("_quality", "data-quality results and Data Docs"), ("_mlflow", "MLflow store (mlflow ui --backend-store-uri sqlite:///" + str(lake / "_mlflow" / "mlflow.db") + ")"), ("report", "HTML report")):
        if (lake / extra).exists():
            print(f"  {what}: {lake / extra}")
    return EXIT_OK


def _demo_stream(args, spark, ctx, lake: Path) -> int:
    from seglake.core import runner
    from seglake.core.config import load_config
    from seglake.devtools import stream_demo
    from seglake.stages.segments.job import segments_file
    print("history: ingest, clean and identity of the generated events in batch (the stream looks the "
          "persons' identifiers up in the identity map)")
    runner.run_chain(ctx, ["ingest", "clean", "identity"])
    yaml_file = stream_demo.demo_segments(segments_file(ctx.cfg), lake / "_stream_demo" / "segments.yaml")
    print(f"triggers: {yaml_file} (cart abandonment judged after {stream_demo.DEMO_ABANDON_MINUTES:g} minute "
          "for the demo; 15 in conf/segments.yaml)")
    cfg = load_config(args.env, args.conf_dir, {"paths": {"lakehouse": str(lake)}, "stream": stream_demo.DEMO_STREAM,
                                                "segments": {"config_file": str(yaml_file)}})
    started = time.perf_counter()
    code = stream_demo.run_demo(spark, cfg, lake, args.rate)
    print(f"\nstream demo finished in {time.perf_counter() - started:.1f} s")
    return code


def cmd_report(args) -> int:
    try:
        from seglake import report
    except ModuleNotFoundError as exc:
        if exc.name == "seglake.report":
            raise registry.JobNotAvailable("`seglake report` is not available yet in this version of seglake") from None
        raise
    cfg = _config(args)
    spark = _spark(cfg, "seglake-report")
    out = report.build_report(spark, cfg, args.out)
    print(f"report written to {out}")
    return EXIT_OK


def cmd_setup(args) -> int:
    from seglake.core import jvm
    coords = jvm.coordinates(_config(args).get("spark.extra_packages"))  # ConfigError: exit 2
    jars = jvm.ensure_jars(coords)
    kafka = jvm.kafka_source_jars()
    pg = jvm.postgres_jdbc_jars()
    print(f"{len(jars)} jars cached in {jvm.jar_dir(coords)}, the Kafka source's {len(kafka)} in "
          f"{kafka[0].parent}, the PostgreSQL JDBC driver's {len(pg)} in {pg[0].parent}; cluster users pass "
          f"--packages {jvm.packages_arg(coords + jvm.KAFKA_SOURCE + jvm.POSTGRES_JDBC)}")
    return EXIT_OK


def explain(exc: BaseException, max_lines: int = 3) -> str:
    """A short explanation of ``exc``: Spark/py4j messages embed whole tracebacks; keep the
    first line and the innermost ``...Error: message`` line."""
    import re
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= max_lines:
        return " ".join(lines)
    errors = [line for line in lines if re.match(r"^([\w.]+)?(Error|Exception)\b.*:", line)]
    picked = [lines[0]] + ([errors[-1]] if errors and errors[-1] != lines[0] else [])
    return " ... ".join(picked)


def cmd_stream(args) -> int:
    from seglake.core.config import ConfigError
    from seglake.stages.stream import produce
    cfg = _config(args)
    servers = args.bootstrap_servers or cfg.get("stream.kafka_bootstrap_servers")
    if not servers:
        raise ConfigError("no Kafka brokers: pass --bootstrap-servers HOST:PORT or set "
                          "stream.kafka_bootstrap_servers (a local broker: seglake kafka start)")
    source = args.source or str(Path(cfg.lakehouse) / "_input" / "landing")
    if "://" not in source and not Path(source).is_dir():
        raise ConfigError(f"--from {source}: no such folder (generate data first: seglake generate --out DIR)")
    summary = produce.produce(_spark(cfg, "seglake-stream-produce"), source, servers,   # bad options: ConfigError
                              args.topic or cfg.get("stream.topic"), rate=args.rate, partitions=args.partitions,
                              late_share=args.late_share, late_seconds=args.late_seconds,
                              duplicate_share=args.duplicate_share, malformed_share=args.malformed_share,
                              seed=args.seed, limit=args.limit,
                              live_tag=f"live-{time.strftime('%Y%m%dT%H%M%S')}" if args.live else None)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_outbox(args) -> int:
    from seglake.stages.export import status
    cfg = _config(args)
    rows = status(_spark(cfg, "seglake-outbox"), cfg)
    if not rows:
        print(f"no outbox yet under {cfg.lakehouse} (seglake run export builds it)")
        return EXIT_OK
    order = ["pending", "scheduled", "retrying", "delivered", "dead", "suppressed", "capped", "cancelled"]
    by_dest: dict[str, dict[str, int]] = {}
    for r in rows:
        by_dest.setdefault(r["destination"], {})[r["state"]] = r["messages"]
    states = [s for s in order if any(s in d for d in by_dest.values())]
    labels = {"pending": "due", "dead": "dead-lettered"}
    header = ["destination"] + [labels.get(s, s) for s in states]
    table = [header] + [[d] + [str(v.get(s, 0)) for s in states] for d, v in sorted(by_dest.items())]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return EXIT_OK


def cmd_kafka(args) -> int:
    from seglake.devtools import kafka
    return kafka.command(args)


def cmd_postgres(args) -> int:
    from seglake.devtools import postgres
    return postgres.command(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "urllib3", "great_expectations", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from seglake.core.config import ConfigError
    from seglake.core.jvm import JarResolutionError
    from seglake.core.spark import SparkStartError
    handlers = {"run": cmd_run, "demo": cmd_demo, "generate": cmd_generate, "report": cmd_report, "setup": cmd_setup,
                "kafka": cmd_kafka, "postgres": cmd_postgres, "stream": cmd_stream, "outbox": cmd_outbox}
    try:
        return handlers[args.verb](args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except registry.JobNotAvailable as exc:
        print(f"not available: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (SparkStartError, JarResolutionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SPARK
    except Exception as exc:  # noqa: BLE001 - a scheduler needs the exit code and one clear line
        from seglake.core.leases import LeaseBusy
        from seglake.core.runner import JobFailed
        busy = exc.cause if isinstance(exc, JobFailed) and isinstance(exc.cause, LeaseBusy) else exc
        if isinstance(busy, LeaseBusy):
            print(f"busy: {busy}", file=sys.stderr)
            return EXIT_BUSY
        if isinstance(exc, JobFailed) and isinstance(exc.cause, ConfigError):   # found once the job ran
            print(f"configuration error: job '{exc.job}': {exc.cause}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, JobFailed):
            log.debug("traceback", exc_info=exc.cause)
            print(f"error: job '{exc.job}' failed: {type(exc.cause).__name__}: {explain(exc.cause)}\n(rerun this job alone with: seglake run {exc.job}; add -v for the traceback)",
                  file=sys.stderr)
        else:
            log.debug("traceback", exc_info=True)
            print(f"error: {type(exc).__name__}: {explain(exc)} (add -v for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
