"""PII handling: the one salted hashing function and where the salt comes from.

Identifiers that are personal data (email, phone, device fingerprints) are replaced by a
salted SHA-256 before anything reaches silver. The salt is a secret read from the
environment variable named by ``clean.pii_salt_env``; it is never logged, and neither are
identifiers.
"""
from __future__ import annotations

import logging
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from seglake.core.config import Config

log = logging.getLogger(__name__)

#: Used only when no salt is configured and ``clean.require_pii_salt`` is false (laptops,
#: tests). Not secret: hashes made with it must never leave a development machine.
DEV_SALT = "seglake-dev-salt-not-secret"


class MissingSaltError(ValueError):
    """The PII salt is required but its environment variable is not set."""


def normalize_identifier(col: Column | str) -> Column:
    """Trim and lower-case an identifier; blank becomes null.

    Emails and device ids are case-insensitive in practice, so ``A@X.com `` and ``a@x.com``
    are the same person. Applied inside :func:`hash_identifier`.
    """
    col = F.col(col) if isinstance(col, str) else col
    trimmed = F.lower(F.trim(col))
    return F.when(trimmed == "", F.lit(None).cast("string")).otherwise(trimmed)


def hash_identifier(col: Column | str, salt: str) -> Column:
    """Salted SHA-256 (hex) of a normalized identifier; null stays null.

    ``sha2(concat(salt, lower(trim(value))), 256)``, built-in functions only. This is the one
    hashing function of the project: tests hash ground-truth identifiers with it to compare.

    Args:
        col: the identifier column (string).
        salt: the secret salt, see :func:`salt`.
    """
    if not isinstance(salt, str) or not salt:
        raise ValueError("hash_identifier needs a non-empty salt string")
    norm = normalize_identifier(col)
    return F.when(norm.isNull(), F.lit(None).cast("string")).otherwise(
        F.sha2(F.concat(F.lit(salt), norm), 256))


def salt(cfg: Config) -> str:
    """The PII salt from the environment variable named by ``clean.pii_salt_env``.

    When the variable is unset or empty: :class:`MissingSaltError` if
    ``clean.require_pii_salt`` is true (prod), else :data:`DEV_SALT` with a warning.
    The value is never logged.
    """
    env_name = cfg.get("clean.pii_salt_env") or "SEGLAKE_PII_SALT"
    value = os.environ.get(env_name, "")
    if value:
        return value
    if cfg.get("clean.require_pii_salt", False):
        raise MissingSaltError(
            f"the PII salt is required (clean.require_pii_salt) but the environment variable "
            f"{env_name} is not set; set it to a long random secret before running this job.")
    log.warning("environment variable %s is not set: hashing PII with the fixed development salt "
                "(set it in any real environment; hashes made now are not protected).", env_name)
    return DEV_SALT
