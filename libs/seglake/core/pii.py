"""PII handling: the one keyed hashing function (HMAC-SHA256) and where its key comes from.

Identifiers that are personal data (email, phone, device fingerprints) are replaced by an
HMAC-SHA256 keyed by a secret before anything reaches silver, and customer ids are derived
with the same keyed function (:mod:`seglake.stages.identity.graph`): without the key, nobody
holding identifiers can recompute a hash or a customer_id to re-identify a person. The key is
read from the environment variable named by ``clean.pii_salt_env`` (default
``SEGLAKE_PII_SALT``; the setting keeps its historical name); it is never logged, and neither
are identifiers. Rotating it changes every hash and every customer_id (README: key rotation).
"""
from __future__ import annotations

import hashlib
import logging
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from seglake.core.config import Config

log = logging.getLogger(__name__)

#: Used only when no key is configured and ``clean.require_pii_salt`` is false (laptops,
#: tests). Not secret: hashes made with it must never leave a development machine.
DEV_SALT = "seglake-dev-salt-not-secret"
DEV_KEY = DEV_SALT

_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104's B)


class MissingSaltError(ValueError):
    """The PII key is required but its environment variable is not set."""


def normalize_identifier(col: Column | str) -> Column:
    """Trim and lower-case an identifier; blank becomes null.

    Emails and device ids are case-insensitive in practice, so ``A@X.com `` and ``a@x.com``
    are the same person. Applied inside :func:`hash_identifier`.
    """
    col = F.col(col) if isinstance(col, str) else col
    trimmed = F.lower(F.trim(col))
    return F.when(trimmed == "", F.lit(None).cast("string")).otherwise(trimmed)


def _check_key(key: str, caller: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{caller} needs a non-empty key string (the PII secret), got "
                         f"{'an empty string' if key == '' else type(key).__name__}")


def _pads(key: str) -> tuple[bytes, bytes]:
    """HMAC's two padded key blocks: (K' xor ipad, K' xor opad), K' = the key's UTF-8 bytes
    (SHA-256 of them when longer than 64 bytes) zero-padded to 64 bytes."""
    k = key.encode("utf-8")
    if len(k) > _BLOCK:
        k = hashlib.sha256(k).digest()
    k = k.ljust(_BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)


def hmac_sha256(col: Column | str, key: str) -> Column:
    """HMAC-SHA256 (64 lower-case hex characters) of a string column's UTF-8 bytes; null stays null.

    ``sha2(opad_block || unhex(sha2(ipad_block || encode(value, 'UTF-8'), 256)), 256)``: RFC 2104
    from built-in functions only (no UDF); equal to Python's
    ``hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()``. The value is used as
    is (no normalization: see :func:`hash_identifier` for identifiers).

    Args:
        col: a string column.
        key: the secret, see :func:`key`.
    """
    _check_key(key, "hmac_sha256")
    col = F.col(col) if isinstance(col, str) else col
    ipad, opad = _pads(key)
    inner = F.unhex(F.sha2(F.concat(F.lit(ipad), F.encode(col, "UTF-8")), 256))
    return F.sha2(F.concat(F.lit(opad), inner), 256)


def hash_identifier(col: Column | str, key: str) -> Column:
    """HMAC-SHA256 (hex) of a normalized identifier keyed by the PII secret; null and blank -> null.

    :func:`hmac_sha256` of ``lower(trim(value))``, built-in functions only. This is the one
    identifier hashing function of the project: tests hash ground-truth identifiers with it to
    compare, and check it against Python's :mod:`hmac`.

    Args:
        col: the identifier column (string).
        key: the secret HMAC key, see :func:`key` (formerly called the salt).
    """
    _check_key(key, "hash_identifier")
    norm = normalize_identifier(col)
    return F.when(norm.isNull(), F.lit(None).cast("string")).otherwise(hmac_sha256(norm, key))


def key(cfg: Config) -> str:
    """The PII HMAC key from the environment variable named by ``clean.pii_salt_env``.

    When the variable is unset or empty: :class:`MissingSaltError` if
    ``clean.require_pii_salt`` is true (prod), else :data:`DEV_KEY` with a warning.
    The value is never logged.
    """
    env_name = cfg.get("clean.pii_salt_env") or "SEGLAKE_PII_SALT"
    value = os.environ.get(env_name, "")
    if value:
        return value
    if cfg.get("clean.require_pii_salt", False):
        raise MissingSaltError(
            f"the PII key is required (clean.require_pii_salt) but the environment variable "
            f"{env_name} is not set; set it to a long random secret before running this job.")
    log.warning("environment variable %s is not set: hashing PII with the fixed development key "
                "(set it in any real environment; hashes made now are not protected).", env_name)
    return DEV_KEY


#: The former name of :func:`key`, kept for callers that say ``pii.salt(cfg)``.
salt = key
