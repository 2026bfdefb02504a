"""Packaging for seglake: behavioral customer segmentation on Spark + Delta Lake.

The runtime pins below are one set known to install and run together (see README,
"Versions"). The JVM side (Delta Lake jars, the Kafka source) is pinned in ``libs/seglake/core/jvm.py``;
the Python ``delta-spark`` version must equal the Delta jar version.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "pyspark==4.1.4",
    "delta-spark==4.4.0",
    "great-expectations[spark]==1.24.1",
    "mlflow==3.17.2",
    "graphframes-py==0.12.3",
    "pandas>=2.2,<3",
    "pyyaml>=6,<7",
    "matplotlib>=3.8,<4",
    # seglake run experiments: the tests' distributions (t, chi-square, normal, noncentral t)
    "scipy>=1.13,<2",
    # seglake stream produce, topic admin (bundles librdkafka)
    "confluent-kafka==2.16.1",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest>=8,<10",
        "chispa>=0.11,<1",
        "scikit-learn>=1.5,<2",
        # tests/test_ab_stats.py, test_experiments.py: the reference implementations
        "statsmodels==0.15.0",
        # tests/test_s3.py: a real S3 API server (moto's server mode) for the s3a:// pipeline run
        "moto[server]==5.2.5",
        # tests/test_clv_model.py: the test-only reference implementation of BG/NBD, Gamma-Gamma
        # and CLV (pure Python, last release 2020; pulls autograd and dill)
        "lifetimes==0.11.3",
    ],
    # benchmarks only: DuckDB is the in-process reference engine of bench/compare.py
    "bench": [
        "duckdb==2.0.0",
    ],
}

setup(
    name="seglake",
    version="0.1.0",
    description="Behavioral customer segmentation as PySpark jobs on Delta Lake",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    package_dir={"": "libs"},
    packages=find_packages("libs"),
    package_data={"seglake": ["py.typed"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["seglake=seglake.cli:main"]},
)
