"""seglake: behavioral customer segmentation as PySpark jobs on Delta Lake."""

__version__ = "0.1.0"
