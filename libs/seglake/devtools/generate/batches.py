"""The simulation's ``mapInPandas`` function: person ids in, :class:`.simulation._Person` rows out
as pandas frames of ``_SIM_COLS`` (numbers only), built from numpy arrays rather than row tuples.
"""
from __future__ import annotations

from typing import Iterator

from seglake.devtools.generate.model import _SIM_COLS, _SIM_SCHEMA
from seglake.devtools.generate.simulation import _Person


#: the numpy type of each ``_SIM_COLS`` column (what the Arrow conversion to ``_SIM_SCHEMA`` expects)
_SIM_DTYPES = [{"LONG": "int64", "INT": "int32", "BOOLEAN": "bool"}[part.split()[1]]
               for part in _SIM_SCHEMA.split(", ")]
_N_ROW_COLS = _SIM_COLS.index("has_uid") + 1          # the columns of a row tuple; the rest are per person


def _frame(persons: list[tuple[list[tuple], list[int], tuple[int, int, int, int]]]) -> "pd.DataFrame":
    """The ``_SIM_COLS`` frame of some persons' :meth:`_Person.simulate_parts` (rows, results
    and (exp_flags, exp_extra_c, churn_ms, decline_ms)).

    The row tuples become one 2-D int64 array in a single C loop (booleans as 0/1), whose columns
    are cast to the schema's types; the per-person columns are repeated per row with numpy.
    """
    import numpy as np
    import pandas as pd

    rows = [row for person_rows, _, _ in persons for row in person_rows]
    body = np.array(rows, dtype=np.int64).reshape(len(rows), _N_ROW_COLS)
    counts = [len(person_rows) for person_rows, _, _ in persons]
    per_person = np.repeat(np.array([tail for _, _, tail in persons], dtype=np.int64).reshape(-1, 4), counts, axis=0)
    results = np.array([x for _, res, _ in persons for x in res], dtype=np.int64)
    exp_flags, exp_extra_c, churn_ms, decline_ms = per_person.T
    cols = [body[:, i] for i in range(_N_ROW_COLS)] + [exp_flags, exp_extra_c, results, churn_ms, decline_ms]
    return pd.DataFrame({name: col.astype(dtype) for name, col, dtype in zip(_SIM_COLS, cols, _SIM_DTYPES)})


def _simulate_batches(seed: int, start_ms: int, end_ms: int, mean_events: float, kiosks: int,
                      kiosk_share: float, experiment: tuple[int, int, float] | None = None):
    """The mapInPandas function: person ids in, simulated event rows out (numbers only)."""
    import pandas as pd

    def run(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        for batch in batches:
            ids = batch["id"].tolist()
            for lo in range(0, len(ids), 500):               # bound memory per yielded frame
                persons = []
                for pid in ids[lo:lo + 500]:
                    p = _Person(int(pid), seed, start_ms, end_ms, mean_events, kiosks, kiosk_share, experiment)
                    rows, results, exp_flags, exp_extra_c = p.simulate_parts()
                    persons.append((rows, results, (exp_flags, exp_extra_c, p.churn_ms, p.decline_ms)))
                yield _frame(persons)
    return run
