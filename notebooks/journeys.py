# Databricks notebook source
# MAGIC %md
# MAGIC # Customer journeys
# MAGIC The first-order Markov transition matrix, the funnel with its drop-off, removal-effect attribution
# MAGIC and the most frequent paths (gold.transition_matrix, gold.journey_metrics, gold.journey_paths;
# MAGIC built by `seglake run journeys`).
# MAGIC
# MAGIC Widgets: `env`, `lakehouse` (empty = from the config), `as_of` (empty = latest).

# COMMAND ----------

from seglake import report

spark, cfg, as_of = report.notebook_context(globals().get("dbutils"), "seglake-journeys")
show = globals().get("display")

# COMMAND ----------

# MAGIC %md ## Transition probabilities P(to | from), all customers and channels

# COMMAND ----------

report.show(report.transition_matrix_wide(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## Funnel and drop-off

# COMMAND ----------

report.show(report.funnel(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## Removal effect per state (share of conversions lost without it)

# COMMAND ----------

report.show(report.journey_metric(spark, cfg, "removal_effect", as_of), show)

# COMMAND ----------

# MAGIC %md ## Most frequent journey paths

# COMMAND ----------

report.show(report.top_journey_paths(spark, cfg, as_of), show)
