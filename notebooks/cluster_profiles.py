# Databricks notebook source
# MAGIC %md
# MAGIC # Cluster profiles
# MAGIC The k-means clusters of the latest (or chosen) as-of date: their labels, sizes and centroids as
# MAGIC standardized differences from the overall mean (gold.clusters, gold.cluster_profiles; built by
# MAGIC `seglake run cluster`). The elbow / silhouette sweep is in MLflow (experiment `seglake`).
# MAGIC
# MAGIC Widgets: `env`, `lakehouse` (empty = from the config), `as_of` (empty = latest).

# COMMAND ----------

from seglake import report

spark, cfg, as_of = report.notebook_context(globals().get("dbutils"), "seglake-cluster-profiles")
show = globals().get("display")

# COMMAND ----------

# MAGIC %md ## Cluster sizes and labels

# COMMAND ----------

report.show(report.cluster_sizes(spark, cfg, as_of), show)

# COMMAND ----------

# MAGIC %md ## Centroids: (cluster mean - mean) / stddev per feature

# COMMAND ----------

report.show(report.cluster_profile_matrix(spark, cfg, as_of), show)
