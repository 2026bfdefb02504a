# Databricks notebook source
# MAGIC %md
# MAGIC # Segment overview
# MAGIC Sizes of the rule-based segments over time, who entered and exited them, and their health
# MAGIC (gold.segment_membership, gold.segment_changes, gold.segment_health; built by `seglake run segments`).
# MAGIC
# MAGIC Widgets: `env` (configuration overlay), `lakehouse` (empty = from the config), `as_of` (empty = latest).
# MAGIC Outside Databricks the same values come from `SEGLAKE_ENV`, `SEGLAKE_LAKEHOUSE`, `SEGLAKE_AS_OF`.

# COMMAND ----------

from seglake import report

spark, cfg, as_of = report.notebook_context(globals().get("dbutils"), "seglake-segment-overview")
show = globals().get("display")

# COMMAND ----------

# MAGIC %md ## Segment sizes per as-of date

# COMMAND ----------

report.show(report.segment_sizes(spark, cfg), show)

# COMMAND ----------

# MAGIC %md ## Entered / exited vs the previous as-of date

# COMMAND ----------

report.show(report.segment_change_counts(spark, cfg), show)

# COMMAND ----------

# MAGIC %md ## Segment health (share, revenue share, conversion, alerts)

# COMMAND ----------

report.show(report.segment_health(spark, cfg, as_of), show)
