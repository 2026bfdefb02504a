"""Activation: ``seglake run export`` and ``seglake outbox status``.

- :mod:`seglake.stages.export.settings` — conf/destinations.yaml (destinations, policies);
- :mod:`seglake.stages.export.outbox` — ``ops.outbox`` rows: idempotency keys, send times,
  suppression, frequency caps;
- :mod:`seglake.stages.export.job` — the run: outbox, cancellations, removals, chunked delivery,
  ``ops.dead_letter``;
- destinations (:mod:`seglake.stages.export.base` is their contract):
  :mod:`~seglake.stages.export.webhook`, :mod:`~seglake.stages.export.postgres`,
  :mod:`~seglake.stages.export.files`.
"""
from seglake.stages.export.job import add_arguments, erase_customers, run, status  # noqa: F401
