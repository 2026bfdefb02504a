"""PII hashing (HMAC-SHA256 keyed by the secret) and where the key comes from."""
from __future__ import annotations

import hashlib
import hmac
import logging

import pytest
from pyspark.sql import functions as F

from seglake.core import pii
from conftest import make_cfg


def _py_hmac(key: str, value: str) -> str:
    """The independent computation: Python's own HMAC-SHA256 of the UTF-8 bytes."""
    return hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()


def _hash_all(spark, values, key):
    df = spark.createDataFrame([(v,) for v in values], "v STRING")
    return [r["h"] for r in df.select(pii.hash_identifier(F.col("v"), key).alias("h")).collect()]


def test_hash_identifier_is_python_hmac_of_normalized_value(spark):
    values = ["bob@mail.com", "Bob@Mail.com ", "  BOB@MAIL.COM", "", "   ", None]
    got = _hash_all(spark, values, "s3cret")
    expect = _py_hmac("s3cret", "bob@mail.com")
    assert got == [expect, expect, expect, None, None, None]
    # not the old salted hash sha256(key || value)
    assert expect != hashlib.sha256(b"s3cretbob@mail.com").hexdigest()


@pytest.mark.parametrize("key", [
    "s3cret",
    "k" * 64,                   # exactly one block: used as is
    "k" * 65,                   # longer than a block: SHA-256 of the key is used
    "clé-ключ-鍵" * 8,           # multi-byte key longer than 64 bytes in UTF-8
    "é" * 32,                   # 64 bytes in UTF-8 (32 characters)
])
def test_hash_identifier_matches_python_hmac_for_keys_and_non_ascii(spark, key):
    values = ["a@x.io", "Zoë@Exämple.de ", "日本語@例え.jp", "+1 555 0100", "😀-device"]
    got = _hash_all(spark, values, key)
    assert got == [_py_hmac(key, v.strip(" ").lower()) for v in values]
    assert all(len(h) == 64 for h in got)


def test_hmac_sha256_is_not_normalized_and_keeps_null(spark):
    df = spark.createDataFrame([("1|user_id|U1",), ("",), (None,)], "v STRING")
    got = [r["h"] for r in df.select(pii.hmac_sha256(F.col("v"), "k").alias("h")).collect()]
    assert got == [_py_hmac("k", "1|user_id|U1"), _py_hmac("k", ""), None]


def test_hash_depends_on_key(spark):
    a, b = (_hash_all(spark, ["x"], k)[0] for k in ("one", "two"))
    assert a != b and len(a) == 64
    assert a == _py_hmac("one", "x") and b == _py_hmac("two", "x")


@pytest.mark.parametrize("bad", ["", None, b"bytes-key"])
def test_empty_or_non_string_key_refused(bad):
    with pytest.raises(ValueError, match="non-empty key"):
        pii.hash_identifier("v", bad)  # refused before any Column is built
    with pytest.raises(ValueError, match="non-empty key"):
        pii.hmac_sha256("v", bad)


def test_salt_is_an_alias_of_key():
    assert pii.salt is pii.key and pii.DEV_KEY == pii.DEV_SALT


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
