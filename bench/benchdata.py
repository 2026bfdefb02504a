"""Generated input data shared by the benchmarks of one size.

``<workdir>/../_data-<events>`` holds one ``seglake generate`` output (seed 42) per requested
size: the ``generate`` benchmark writes it (timed); every other benchmark reuses it and
generates it, untimed, only when it is missing or was made for another size.
"""
from __future__ import annotations

import json
from pathlib import Path

SEED = 42


def data_dir(workdir: Path, events: int) -> Path:
    return Path(workdir).parent / f"_data-{events}"


def generate_into(spark, out: Path, events: int) -> dict:
    from seglake.devtools.generate import generate

    return generate(spark, out, events, seed=SEED)


def ensure_data(spark, workdir: Path, events: int) -> tuple[Path, dict]:
    """The data folder for ``events`` and its counts.json (generating it when needed)."""
    data = data_dir(workdir, events)
    counts_file = data / "ground_truth" / "counts.json"
    if not (counts_file.exists() and json.loads(counts_file.read_text()).get("events_requested") == events):
        generate_into(spark, data, events)
    return data, json.loads(counts_file.read_text())


def lake_config(workdir: Path, data: Path):
    """A local config writing a fresh lakehouse under ``workdir`` and reading ``data``'s landing files."""
    import shutil

    lake = Path(workdir) / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    return config_for(lake, data)


def sibling_lake(workdir: Path, bench: str, events: int, table: str) -> Path | None:
    """The lakehouse of benchmark ``bench`` at the same size when it holds ``table`` ("silver/events")."""
    lake = Path(workdir).parent / f"{bench}-{events}" / "lake"
    return lake if (lake / table / "_delta_log").exists() else None


def config_for(lake: Path, data: Path | None = None):
    """A local config over the lakehouse ``lake`` (reading ``data``'s landing files when given)."""
    from seglake.core.config import load_config

    repo = Path(__file__).resolve().parents[1]
    paths = {"lakehouse": str(lake)} | ({"landing": str(Path(data) / "landing")} if data else {})
    return load_config("local", repo / "conf", overrides={"paths": paths})
