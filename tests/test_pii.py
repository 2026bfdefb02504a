"""PII hashing and the salt."""
from __future__ import annotations

import hashlib
import logging

import pytest
from pyspark.sql import functions as F

from seglake.core import pii
from conftest import make_cfg


def test_hash_identifier_matches_hashlib_and_normalizes(spark):
    df = spark.createDataFrame([("Bob@Mail.com ",), ("bob@mail.com",), ("",), (None,)], "v STRING")
    got = [r["h"] for r in df.select(pii.hash_identifier(F.col("v"), "s3cret").alias("h")).collect()]
    expect = hashlib.sha256(b"s3cretbob@mail.com").hexdigest()
    assert got == [expect, expect, None, None]


def test_hash_depends_on_salt(spark):
    df = spark.createDataFrame([("x",)], "v STRING")
    a, b = (df.select(pii.hash_identifier("v", s).alias("h")).first()["h"] for s in ("one", "two"))
    assert a != b and len(a) == 64


def test_empty_salt_refused():
    with pytest.raises(ValueError, match="non-empty salt"):
        pii.hash_identifier(F.col("v"), "")


def test_salt_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_SALT", "from-env")
    cfg = make_cfg(tmp_path, clean={"pii_salt_env": "MY_SALT"})
    assert pii.salt(cfg) == "from-env"


def test_missing_salt_is_an_error_when_required(monkeypatch, tmp_path):
    monkeypatch.delenv("MY_SALT", raising=False)
    cfg = make_cfg(tmp_path, clean={"pii_salt_env": "MY_SALT", "require_pii_salt": True})
    with pytest.raises(pii.MissingSaltError, match="MY_SALT is not set"):
        pii.salt(cfg)


def test_missing_salt_dev_fallback_warns_without_leaking(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("MY_SALT", raising=False)
    cfg = make_cfg(tmp_path, clean={"pii_salt_env": "MY_SALT", "require_pii_salt": False})
    with caplog.at_level(logging.WARNING, logger="seglake.core.pii"):
        assert pii.salt(cfg) == pii.DEV_SALT
    assert "MY_SALT" in caplog.text and pii.DEV_SALT not in caplog.text


def test_salt_value_never_logged(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("MY_SALT", "very-secret-value")
    cfg = make_cfg(tmp_path, clean={"pii_salt_env": "MY_SALT"})
    with caplog.at_level(logging.DEBUG):
        pii.salt(cfg)
    assert "very-secret-value" not in caplog.text
