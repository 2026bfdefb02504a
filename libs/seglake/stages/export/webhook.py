"""The webhook destination: signed JSON batches POSTed to an HTTP endpoint, retried with backoff.

One entry of conf/destinations.yaml::

    crm_hook:
      type: webhook
      channel: crm
      url: https://hooks.example.com/seglake
      secret_env: SEGLAKE_CRM_HOOK_SECRET   # the variable holding the HMAC key (never the key itself)
      batch_size: 100                       # messages per POST
      timeout_seconds: 10                   # connect and read
      attempts_per_run: 4
      max_attempts: 8                       # over all runs, then dead
      backoff_base_seconds: 0.5
      backoff_max_seconds: 30
      rate_per_second: 0                    # requests per second for the whole destination, 0 = unlimited
      delete_url: https://hooks.example.com/seglake/erase   # optional: erasure calls

Wire format of one request (:func:`send`): the body is compact JSON with sorted keys,
``{"messages": [{"idempotency_key", "customer_id", "kind", "name", "change", "version", "channel",
"scheduled_at", "payload"}, ...]}``; the headers carry ``Idempotency-Key`` (sha256 hex of the
batch's message keys joined by newlines: the same on every retry of the batch),
``X-Seglake-Timestamp`` (unix seconds) and ``X-Seglake-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``f"{timestamp}.{body}"`` with the secret. A receiver verifies the signature,
rejects stale timestamps if it likes, and dedupes on each message's ``idempotency_key``: a
request that timed out may have been applied, and its retry then repeats it.

Retries: 5xx, 408, 429, timeouts and connection errors are retried within the run with
exponential backoff and full jitter (``Retry-After`` honoured on 429 and 503); any other
non-2xx answer makes the batch ``dead`` at once. The core is plain Python (:func:`send`,
stdlib HTTP only) so it is tested without Spark; :class:`WebhookDestination` runs it on the
executors, one partition at a time.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from itertools import islice
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from seglake import __version__
from seglake.stages.export.base import MESSAGE_COLUMNS, OUTCOME_DDL, DestinationConfigError, Outcome
from seglake.stages.export.settings import COMMON_KEYS, unknown_key

log = logging.getLogger("seglake.stages.export.webhook")

USER_AGENT = f"seglake/{__version__}"

#: the settings of a webhook entry and their defaults (None: required or optional without default)
DEFAULTS: dict[str, object] = {
    "url": None,
    "secret_env": None,
    "batch_size": 100,
    "timeout_seconds": 10,
    "attempts_per_run": 4,
    "max_attempts": 8,
    "backoff_base_seconds": 0.5,
    "backoff_max_seconds": 30,
    "rate_per_second": 0,
    "delete_url": None,
    "channel": "webhook",
}
#: keys of a destination entry that the export job reads (accepted here, not used)
JOB_KEYS = tuple(dict.fromkeys(COMMON_KEYS + ("source",)))

#: the fields of a message that go on the wire (``destination`` and ``attempts`` stay home)
WIRE_FIELDS = ("idempotency_key", "customer_id", "kind", "name", "change", "version", "channel",
               "scheduled_at", "payload")

#: HTTP answers worth another try (besides every 5xx)
RETRYABLE_4XX = (408, 429)
#: answers whose Retry-After header is honoured
RETRY_AFTER_CODES = (429, 503)


# --- configuration ---------------------------------------------------------------------------

def _fail(name: str, text: str) -> DestinationConfigError:
    return DestinationConfigError(f"destination '{name}': {text}")


def _url(name: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, f"'{key}' must be an http:// or https:// URL, got {value!r}.")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(name, f"'{key}' must be an http:// or https:// URL with a host, got {value!r}.")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise _fail(name, f"'{key}' has an invalid port: {value!r}.") from None
    return value.strip()


def _number(name: str, key: str, value: object, *, integer: bool, minimum: float,
            exclusive: bool = False) -> int | float:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise _fail(name, f"'{key}' must be {kind}, got {value!r}.")
    if value < minimum or (exclusive and value == minimum):
        bound = f"more than {minimum:g}" if exclusive else f"at least {minimum:g}"
        raise _fail(name, f"'{key}' must be {bound}, got {value!r}.")
    return int(value) if integer else float(value)


def validate(name: str, settings: dict | None) -> dict:
    """The normalized settings of webhook destination ``name`` (defaults filled in, ``name``
    added); raises :class:`DestinationConfigError` naming the destination and the key."""
    if not isinstance(settings, dict):
        raise _fail(name, f"the entry must be a mapping of settings, got {type(settings).__name__}.")
    known = list(DEFAULTS) + list(JOB_KEYS)
    problem = unknown_key(settings, known, listed=DEFAULTS)
    if problem:
        raise _fail(name, problem)
    for key in ("url", "secret_env"):
        if settings.get(key) in (None, ""):
            raise _fail(name, f"the required key '{key}' is missing.")
    out = {key: settings.get(key, default) for key, default in DEFAULTS.items()}
    out["name"] = name
    out["url"] = _url(name, "url", out["url"])
    if out["delete_url"] is not None:
        out["delete_url"] = _url(name, "delete_url", out["delete_url"])
    if not isinstance(out["secret_env"], str) or not out["secret_env"].strip():
        raise _fail(name, f"'secret_env' must be the name of an environment variable, got {out['secret_env']!r}.")
    out["secret_env"] = out["secret_env"].strip()
    if not isinstance(out["channel"], str) or not out["channel"].strip():
        raise _fail(name, f"'channel' must be a non-empty text, got {out['channel']!r}.")
    out["batch_size"] = _number(name, "batch_size", out["batch_size"], integer=True, minimum=1)
    out["timeout_seconds"] = _number(name, "timeout_seconds", out["timeout_seconds"], integer=False,
                                     minimum=0, exclusive=True)
    out["attempts_per_run"] = _number(name, "attempts_per_run", out["attempts_per_run"], integer=True, minimum=1)
    out["max_attempts"] = _number(name, "max_attempts", out["max_attempts"], integer=True, minimum=1)
    if out["attempts_per_run"] > out["max_attempts"]:
        raise _fail(name, f"'attempts_per_run' ({out['attempts_per_run']}) is more than "
                          f"'max_attempts' ({out['max_attempts']}), which counts the attempts of all runs.")
    out["backoff_base_seconds"] = _number(name, "backoff_base_seconds", out["backoff_base_seconds"],
                                          integer=False, minimum=0)
    out["backoff_max_seconds"] = _number(name, "backoff_max_seconds", out["backoff_max_seconds"],
                                         integer=False, minimum=0)
    out["rate_per_second"] = _number(name, "rate_per_second", out["rate_per_second"], integer=False, minimum=0)
    return out


def read_secret(name: str, settings: dict) -> str:
    """The HMAC key from the environment variable ``settings["secret_env"]`` (never logged)."""
    var = settings["secret_env"]
    secret = os.environ.get(var, "")
    if not secret:
        raise _fail(name, f"the environment variable {var} named by 'secret_env' is not set or empty; "
                          f"set it to the webhook's signing key.")
    return secret


# --- wire format -----------------------------------------------------------------------------

def _iso_utc(value: object) -> str | None:
    """ISO-8601 UTC text of a timestamp. A naive datetime is what PySpark makes of a TIMESTAMP
    (local time of the Python worker), so it is converted from local time; a naive text is UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        value = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if not isinstance(value, datetime):
        raise TypeError(f"scheduled_at must be a datetime or an ISO-8601 text, got {type(value).__name__}")
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _wire(message: dict) -> dict:
    out = {field: message.get(field) for field in WIRE_FIELDS}
    out["scheduled_at"] = _iso_utc(out["scheduled_at"])
    payload = out["payload"]
    out["payload"] = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
    return out


def _body(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def batch_key(keys: Iterable[str]) -> str:
    """The ``Idempotency-Key`` header of a batch: sha256 hex of its message keys joined by newlines."""
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed with ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def _headers(secret: str, body: bytes, idempotency_key: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": idempotency_key,
            "X-Seglake-Timestamp": timestamp, "X-Seglake-Signature": signature(secret, timestamp, body)}


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str | None, str]:
    """One POST on a fresh connection: (status, Retry-After header, first 4 KB of the answer).
    Raises OSError / http.client.HTTPException on timeouts and connection failures."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)   # connect and every read
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read(4096).decode("utf-8", errors="replace")
        return resp.status, resp.getheader("Retry-After"), text
    finally:
        conn.close()


def _failure(exc: BaseException, timeout: float) -> str:
    """A short text of a transport failure (never the request: it holds the payload)."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout:g} s"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.__class__.__name__})"
    return f"connection error ({exc.__class__.__name__}: {str(exc)[:120]})"


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# --- retries and pacing ----------------------------------------------------------------------

class _Pacer:
    """At most ``rate`` requests per second (minimum spacing on the monotonic clock); 0 = no limit."""

    def __init__(self, rate: float, sleep: Callable[[float], None], clock: Callable[[], float] = time.monotonic):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.sleep, self.clock = sleep, clock
        self.next_at: float | None = None

    def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        if self.next_at is not None and self.next_at > now:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


@dataclass(frozen=True)
class _Result:
    status: str            # delivered | dead | retry (the caller turns retry into dead when attempts are spent)
    made: int              # attempts made in this run
    response: str | None
    error: str | None


def _exchange(url: str, body: bytes, idempotency_key: str, secret: str, settings: dict, budget: int,
              what: str, sleep: Callable[[float], None], rng: random.Random, pacer: _Pacer) -> _Result:
    """POST ``body`` until it is accepted, rejected, or ``budget`` attempts are made."""
    timeout = settings["timeout_seconds"]
    base, cap = settings["backoff_base_seconds"], settings["backoff_max_seconds"]
    made, response, error = 0, None, None
    while True:
        pacer.wait()
        made += 1
        retry_after = None
        try:
            # re-signed on every attempt (a fresh timestamp); body and Idempotency-Key stay the same
            code, retry_after_header, text = _post(url, body, _headers(secret, body, idempotency_key), timeout)
        except (OSError, http.client.HTTPException) as exc:
            response, error = None, _failure(exc, timeout)
        else:
            response = f"HTTP {code}"
            if 200 <= code < 300:
                return _Result("delivered", made, response, None)
            if code < 500 and code not in RETRYABLE_4XX:
                return _Result("dead", made, response, f"HTTP {code}: {text[:200]}")
            error = response
            if code in RETRY_AFTER_CODES:
                retry_after = _retry_after(retry_after_header)
        if made >= budget:
            log.warning("webhook %s: attempt %d for %s failed (%s); no more attempts in this run",
                        settings["name"], made, what, error)
            return _Result("retry", made, response, error)
        wait = rng.uniform(0, min(cap, base * 2 ** (made - 1)))
        if retry_after is not None:
            if retry_after > cap:
                error = f"{error} (Retry-After {retry_after:g} s is more than backoff_max_seconds {cap:g})"
                log.warning("webhook %s: attempt %d for %s failed (%s); trying again in a later run",
                            settings["name"], made, what, error)
                return _Result("retry", made, response, error)
            wait = max(wait, retry_after)
        log.warning("webhook %s: attempt %d for %s failed (%s); next try in %.2f s",
                    settings["name"], made, what, error, wait)
        sleep(wait)


def _send_batch(batch: list[dict], settings: dict, secret: str, sleep: Callable[[float], None],
                rng: random.Random, pacer: _Pacer) -> Iterator[Outcome]:
    max_attempts = settings["max_attempts"]
    ready: list[tuple[dict, int, dict]] = []
    for message in batch:
        key, prior = message["idempotency_key"], int(message.get("attempts") or 0)
        if prior >= max_attempts:
            yield Outcome(key, "dead", prior, None, f"max_attempts ({max_attempts}) already spent by earlier runs")
            continue
        try:
            ready.append((message, prior, _wire(message)))
        except (ValueError, TypeError) as exc:
            yield Outcome(key, "dead", prior, None, f"message cannot be encoded: {str(exc)[:160]}")
    if not ready:
        return
    body = _body({"messages": [wire for _, _, wire in ready]})
    # the batch stops when the message with the most earlier attempts reaches max_attempts
    budget = min(settings["attempts_per_run"], max_attempts - max(prior for _, prior, _ in ready))
    result = _exchange(settings["url"], body, batch_key(m["idempotency_key"] for m, _, _ in ready), secret,
                       settings, budget, f"a batch of {len(ready)} messages", sleep, rng, pacer)
    for message, prior, _ in ready:
        total = prior + result.made
        status = result.status
        if status == "retry" and total >= max_attempts:
            status = "dead"
        yield Outcome(message["idempotency_key"], status, total, result.response, result.error)


def send(messages: Iterable[dict], settings: dict, secret: str, share: float = 1.0, *,
         sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
         clock: Callable[[], float] = time.monotonic) -> Iterator[Outcome]:
    """Deliver ``messages`` (dicts with the keys of :data:`MESSAGE_COLUMNS`) in batches of
    ``settings["batch_size"]``; yields one :class:`Outcome` per message, a batch at a time.

    ``settings`` are validated (:func:`validate`); ``share`` is this caller's part of
    ``rate_per_second`` (1 / number of partitions sending at once). ``sleep``, ``rng`` and
    ``clock`` are injectable so tests check backoff without waiting.
    """
    rng = rng if rng is not None else random.Random()
    pacer = _Pacer(settings["rate_per_second"] * share, sleep, clock)
    rows = iter(messages)
    while batch := list(islice(rows, settings["batch_size"])):
        yield from _send_batch(batch, settings, secret, sleep, rng, pacer)


def _partition(settings: dict, secret: str, share: float, rows: Iterable) -> Iterator[tuple]:
    """The executor side of :meth:`WebhookDestination.deliver`: one partition's Rows to outcome tuples."""
    for outcome in send((row.asDict() for row in rows), settings, secret, share):
        yield outcome.as_row()


# --- the destination ---------------------------------------------------------------------------

class WebhookDestination:
    """A webhook entry of conf/destinations.yaml (see the module docstring for its settings)."""

    kind = "webhook"

    def __init__(self, name: str, settings: dict, cfg=None):
        self.name = name
        self.settings = validate(name, settings)
        self.channel = self.settings["channel"]
        self.cfg = cfg
        self._secret = read_secret(name, self.settings)

    def __repr__(self) -> str:   # never the secret
        return f"WebhookDestination(name={self.name!r}, url={self.settings['url']!r}, channel={self.channel!r})"

    def deliver(self, spark, messages, run_id: str):
        """POST ``messages`` (:data:`MESSAGE_COLUMNS`) from the executors; one OUTCOME_DDL row each."""
        rdd = messages.select(*MESSAGE_COLUMNS).rdd
        share = 1.0 / max(1, rdd.getNumPartitions())
        # Python per partition on purpose: the work is network I/O per batch (POST, wait, retry),
        # not a column computation Spark could express; it runs on the executors, so the sending
        # scales out with the partitions while each partition keeps its share of the rate limit.
        outcomes = rdd.mapPartitions(partial(_partition, self.settings, self._secret, share))
        return spark.createDataFrame(outcomes, OUTCOME_DDL)

    def erase(self, spark, customer_ids: list[str], run_id: str, *,
              sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> dict:
        """POST the erased ``customer_ids`` to ``delete_url`` (signed, retried like a batch);
        without a ``delete_url`` there is nothing to call. Raises RuntimeError when the call fails."""
        ids = sorted(set(customer_ids))
        url = self.settings["delete_url"]
        if not url or not ids:
            return {"deletion_calls": 0, "customers": len(ids)}
        body = _body({"customer_ids": ids, "run_id": run_id})
        pacer = _Pacer(self.settings["rate_per_second"], sleep)
        result = _exchange(url, body, batch_key(["erase", *ids]), self._secret, self.settings,
                           self.settings["attempts_per_run"], f"an erasure call for {len(ids)} customers",
                           sleep, rng if rng is not None else random.Random(), pacer)
        if result.status != "delivered":
            raise RuntimeError(f"webhook destination '{self.name}' did not accept the erasure call for "
                               f"{len(ids)} customers after {result.made} attempts (last error: {result.error}).")
        return {"deletion_calls": 1, "customers": len(ids)}
