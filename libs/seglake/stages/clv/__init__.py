"""Customer lifetime value (``seglake run clv --as-of D``) -> gold.customer_value.

BG/NBD (future repeat purchases, P(alive)) and Gamma-Gamma (spend per purchase), Fader, Hardie
& Lee, fitted by maximum likelihood. :mod:`.summary` builds the per-customer (frequency,
recency, age, monetary value) summaries in Spark and compresses them into cells whose number
does not grow with customers; :mod:`.model` (numpy/scipy, driver side) fits the cells and
predicts; :mod:`.job` scores every customer per cell and writes the table and an MLflow run.
"""
from __future__ import annotations

from seglake.stages.clv.job import (PURCHASE_HORIZONS, USES_AS_OF, VALUE_COLUMNS, ClvSettings, add_arguments,
                                    cell_predictions, expected_spend, fit, run)

__all__ = ["run", "add_arguments", "USES_AS_OF", "PURCHASE_HORIZONS", "VALUE_COLUMNS", "ClvSettings",
           "cell_predictions", "expected_spend", "fit"]
