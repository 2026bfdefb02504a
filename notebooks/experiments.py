# Databricks notebook source
# MAGIC %md
# MAGIC # Experiments: A/B tests on segments
# MAGIC Who is in which variant, the primary metric of each experiment with its intervals, the sample
# MAGIC ratio check and the uplift chart (gold.experiment_assignments, gold.ab_results; built by
# MAGIC `seglake run experiments` from conf/experiments.yaml).
# MAGIC
# MAGIC Widgets: `env`, `lakehouse` (empty = from the config). gold.ab_results holds the last analysis of
# MAGIC each experiment (its `as_of_date` column), so `as_of` is not used here.

# COMMAND ----------

from seglake import report

spark, cfg, _ = report.notebook_context(globals().get("dbutils"), "seglake-experiments")
show = globals().get("display")

# COMMAND ----------

# MAGIC %md ## Assigned customers per experiment and variant

# COMMAND ----------

report.show(report.experiment_assigned(spark, cfg), show)

# COMMAND ----------

# MAGIC %md ## Sample ratio check (a mismatch means the results are not trustworthy)

# COMMAND ----------

report.show(report.experiment_srm(spark, cfg), show)

# COMMAND ----------

# MAGIC %md ## Primary metric: uplift vs control with intervals, p-value, CUPED, power

# COMMAND ----------

report.show(report.experiment_results(spark, cfg, "primary"), show)

# COMMAND ----------

# MAGIC %md ## Uplift chart (relative uplift with interval bars; significant in colour)

# COMMAND ----------

chart = report.experiment_uplift_chart(spark, cfg, globals().get("displayHTML"))
