# Databricks notebook source
# MAGIC %md
# MAGIC # Customer lifetime value
# MAGIC BG/NBD (repeat purchases, P(alive)) and Gamma-Gamma (spend per purchase) after Fader, Hardie & Lee:
# MAGIC the valued customers, CLV deciles, the P(alive) distribution, CLV per segment, and the fitted
# MAGIC parameters with the charts (gold.customer_value, gold.segment_membership and the MLflow run of the
# MAGIC fit; built by `seglake run clv`).
# MAGIC
# MAGIC Widgets: `env`, `lakehouse` (empty = from the config), `as_of` (empty = the latest as-of date of
# MAGIC gold.customer_value).

# COMMAND ----------

from seglake import report

spark, cfg, as_of = report.notebook_context(globals().get("dbutils"), "seglake-customer-value")
show = globals().get("display")

# COMMAND ----------

# MAGIC %md ## Customers valued, total and mean CLV over the horizon, discount rate, model run

# COMMAND ----------

report.show(report.value_summary(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## CLV deciles (10 = highest): customers, CLV range, mean CLV, P(alive), expected purchases, spend

# COMMAND ----------

report.show(report.value_deciles(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## P(alive) distribution (10 buckets)

# COMMAND ----------

report.show(report.value_p_alive(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## CLV per segment at the same as-of date

# COMMAND ----------

report.show(report.value_segments(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## Model parameters (estimates, standard errors) and charts (P(alive), mean CLV per decile)

# COMMAND ----------

chart = report.value_chart(spark, cfg, as_of, globals().get("displayHTML"))
