"""Customer lifetime value (``seglake run clv``): not built yet.

The statistical core is :mod:`seglake.stages.clv.model` (pure numpy/scipy, driver side):
BG/NBD (future repeat purchases, P(alive)) and Gamma-Gamma (spend per purchase) fitted by
maximum likelihood on compressed cells ``(x, t_x, T, count)`` and ``(x, m_bar, count)``, and the
discounted CLV. The Spark job (building those cells from ``silver``, scoring customers) is not
written yet, so this package deliberately has no ``run``: the registry reports the job as
not available.
"""
