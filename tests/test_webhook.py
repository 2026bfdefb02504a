"""The webhook destination against a real local receiver with scripted faults (pure Python, no Spark):
retries and dedupe, dead letters, Retry-After, attempts over runs, backoff, signatures, the rate
limit, configuration errors and erasure calls."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from seglake.devtools.procs import free_port
from seglake.devtools.receiver import Receiver
from seglake.stages.export import webhook
from seglake.stages.export.base import DestinationConfigError
from seglake.stages.export.webhook import WIRE_FIELDS, WebhookDestination, send, validate

SECRET = "test-signing-key"
SECRET_ENV = "SEGLAKE_TEST_HOOK_SECRET"
SCHEDULED = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def _messages(n: int, attempts: int = 0) -> list[dict]:
    return [{"idempotency_key": f"key-{i:04d}", "destination": "hook", "customer_id": f"c{i}", "kind": "segment",
             "name": "vip", "change": "entered", "version": "2024-05-01", "channel": "webhook",
             "scheduled_at": SCHEDULED, "payload": json.dumps({"score": i}), "attempts": attempts}
            for i in range(n)]


def _settings(url: str, **overrides) -> dict:
    raw = {"url": url, "secret_env": SECRET_ENV, "timeout_seconds": 5, "backoff_base_seconds": 0.01,
           "backoff_max_seconds": 0.5, **overrides}
    return validate("hook", raw)


def _by_key(outcomes) -> dict:
    return {o.idempotency_key: o for o in outcomes}


def _no_wait(_seconds: float) -> None:
    pass


# --- delivery through faults ------------------------------------------------------------------

def test_every_message_is_applied_once_through_a_fault_script():
    script = ["500", "503", "drop", "timeout:3", "429:0.2", "drop-after-apply"]
    messages = _messages(250)
    with Receiver(SECRET, script) as receiver:
        settings = _settings(receiver.url, batch_size=50, timeout_seconds=1.0, attempts_per_run=8, max_attempts=10)
        outcomes = list(send(messages, settings, SECRET))
        requests = receiver.requests
        keys, duplicates = receiver.received_keys(), receiver.duplicates

    assert len(outcomes) == 250
    assert {o.status for o in outcomes} == {"delivered"}
    assert {(o.response, o.error) for o in outcomes} == {("HTTP 200", None)}
    assert keys == {m["idempotency_key"] for m in messages}
    # the first batch was applied by the timeout, again by drop-after-apply and again by the final ok
    assert duplicates == 2 * 50
    # the first batch took the six faults plus one success; the other four batches one request each
    attempts = _by_key(outcomes)
    assert {attempts[f"key-{i:04d}"].attempts for i in range(50)} == {7}
    assert {attempts[f"key-{i:04d}"].attempts for i in range(50, 250)} == {1}
    assert [r.action for r in requests] == script + ["ok"] * 5
    assert [r.messages for r in requests] == [50] * 11
    first_batch = hashlib.sha256("\n".join(f"key-{i:04d}" for i in range(50)).encode()).hexdigest()
    assert {r.idempotency_key for r in requests[:7]} == {first_batch}
    assert len({r.idempotency_key for r in requests}) == 5


def test_a_4xx_is_dead_at_once_and_the_other_batches_are_delivered():
    with Receiver(SECRET, ["ok", "400", "ok"]) as receiver:
        outcomes = _by_key(send(_messages(150), _settings(receiver.url, batch_size=50), SECRET))
        requests, keys = receiver.requests, receiver.received_keys()

    dead = [o for o in outcomes.values() if o.status == "dead"]
    assert sorted(o.idempotency_key for o in dead) == [f"key-{i:04d}" for i in range(50, 100)]
    assert {(o.attempts, o.response, o.error) for o in dead} == {(1, "HTTP 400", "HTTP 400: scripted answer 400")}
    assert {o.status for k, o in outcomes.items() if int(k[4:]) < 50 or int(k[4:]) >= 100} == {"delivered"}
    assert [r.action for r in requests] == ["ok", "400", "ok"]      # the rejected batch was not retried
    assert keys == {f"key-{i:04d}" for i in list(range(50)) + list(range(100, 150))}


def test_retry_after_is_waited_for():
    with Receiver(SECRET, ["429:0.3"]) as receiver:
        outcomes = list(send(_messages(10), _settings(receiver.url, backoff_base_seconds=0.001,
                                                      backoff_max_seconds=1), SECRET))
        requests = receiver.requests
    assert {(o.status, o.attempts) for o in outcomes} == {("delivered", 2)}
    assert len(requests) == 2
    assert requests[1].at - requests[0].at >= 0.3


def test_a_retry_after_beyond_backoff_max_leaves_the_batch_for_a_later_run():
    with Receiver(SECRET, ["429:60"]) as receiver:
        outcomes = list(send(_messages(5), _settings(receiver.url, backoff_max_seconds=1), SECRET, sleep=_no_wait))
        assert len(receiver.requests) == 1
    assert {(o.status, o.attempts, o.response) for o in outcomes} == {("retry", 1, "HTTP 429")}
    assert "Retry-After 60 s is more than backoff_max_seconds 1" in outcomes[0].error


def test_attempts_add_up_over_runs_until_dead():
    with Receiver(SECRET, fail_rate=1.0, faults=("503",)) as receiver:
        settings = _settings(receiver.url, attempts_per_run=2, max_attempts=5)
        messages, seen = _messages(3), []
        for _ in range(3):
            outcomes = _by_key(send(messages, settings, SECRET, sleep=_no_wait))
            seen.append({(o.status, o.attempts, o.response, o.error) for o in outcomes.values()})
            messages = [{**m, "attempts": outcomes[m["idempotency_key"]].attempts} for m in messages]
        requests = receiver.requests
    assert seen == [{("retry", 2, "HTTP 503", "HTTP 503")}, {("retry", 4, "HTTP 503", "HTTP 503")},
                    {("dead", 5, "HTTP 503", "HTTP 503")}]
    assert len(requests) == 2 + 2 + 1      # run 3 had one attempt left of max_attempts
    assert receiver.received_keys() == set()


def test_a_refused_connection_is_retried_then_left_for_the_next_run():
    url = f"http://127.0.0.1:{free_port()}/hook"     # nothing listens there
    outcomes = list(send(_messages(2), _settings(url, attempts_per_run=3), SECRET, sleep=_no_wait))
    assert {(o.status, o.attempts, o.response, o.error) for o in outcomes} == {("retry", 3, None, "connection refused")}


def test_backoff_waits_are_full_jitter_within_the_exponential_cap():
    waits: list[float] = []
    with Receiver(SECRET, ["503", "503", "503"]) as receiver:
        settings = _settings(receiver.url, backoff_base_seconds=1.0, backoff_max_seconds=3.0, attempts_per_run=4)
        outcomes = list(send(_messages(4), settings, SECRET, sleep=waits.append, rng=random.Random(7)))
    assert {(o.status, o.attempts) for o in outcomes} == {("delivered", 4)}
    caps = [min(3.0, 1.0 * 2 ** (n - 1)) for n in (1, 2, 3)]
    assert caps == [1.0, 2.0, 3.0]
    assert len(waits) == 3 and all(0 <= w <= cap for w, cap in zip(waits, caps))
    same_seed = random.Random(7)
    assert waits == [same_seed.uniform(0, cap) for cap in caps]


def test_no_wait_after_the_last_attempt_of_a_run():
    waits: list[float] = []
    with Receiver(SECRET, fail_rate=1.0, faults=("500",)) as receiver:
        outcomes = list(send(_messages(1), _settings(receiver.url, attempts_per_run=3), SECRET, sleep=waits.append))
    assert outcomes[0].status == "retry" and outcomes[0].attempts == 3
    assert len(waits) == 2


# --- signatures and wire format ------------------------------------------------------------------

def test_the_receiver_rejects_a_wrong_signature_and_accepts_the_right_one():
    with Receiver(SECRET) as receiver:
        wrong = list(send(_messages(3), _settings(receiver.url), "not-the-key", sleep=_no_wait))
        assert receiver.bad_signatures == 1 and receiver.received_keys() == set()
        right = list(send(_messages(3), _settings(receiver.url), SECRET))
        assert receiver.bad_signatures == 1 and len(receiver.received_keys()) == 3
    assert {(o.status, o.attempts, o.response) for o in wrong} == {("dead", 1, "HTTP 401")}
    assert wrong[0].error.startswith("HTTP 401: bad or missing signature")
    assert {o.status for o in right} == {"delivered"}


def test_wire_format_and_signature_checked_independently(monkeypatch):
    calls = []
    answers = iter([(503, None, "busy"), (200, None, "{}")])

    def fake_post(url, body, headers, timeout):
        calls.append((url, body, dict(headers), timeout))
        return next(answers)

    monkeypatch.setattr(webhook, "_post", fake_post)
    messages = _messages(2)
    messages[1]["scheduled_at"] = "2024-05-01 10:30:00"      # a text without zone is UTC
    before = int(time.time())
    outcomes = list(send(messages, _settings("https://hooks.example.com/in?x=1", timeout_seconds=7), SECRET,
                         sleep=_no_wait))
    assert {(o.status, o.attempts) for o in outcomes} == {("delivered", 2)}
    assert len(calls) == 2
    (url, body, headers, timeout), (_, body2, headers2, _) = calls
    assert url == "https://hooks.example.com/in?x=1" and timeout == 7.0
    document = json.loads(body)
    assert body == json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert [sorted(m) for m in document["messages"]] == [sorted(WIRE_FIELDS)] * 2
    assert document["messages"][0]["payload"] == {"score": 0}
    assert [m["scheduled_at"] for m in document["messages"]] == ["2024-05-01T08:00:00Z", "2024-05-01T10:30:00Z"]
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"].startswith("seglake/")
    assert headers["Idempotency-Key"] == hashlib.sha256(b"key-0000\nkey-0001").hexdigest()
    timestamp = headers["X-Seglake-Timestamp"]
    assert int(timestamp) >= before
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Seglake-Signature"] == f"sha256={expected}"
    # the retry sends the same body under the same Idempotency-Key
    assert body2 == body and headers2["Idempotency-Key"] == headers["Idempotency-Key"]


def test_a_payload_that_is_not_json_is_dead_without_a_request(monkeypatch):
    calls = []
    monkeypatch.setattr(webhook, "_post", lambda *args: calls.append(args) or (200, None, "{}"))
    messages = _messages(2)
    messages[0]["payload"] = "{not json"
    outcomes = _by_key(send(messages, _settings("http://127.0.0.1:9/hook"), SECRET))
    assert outcomes["key-0000"].status == "dead" and outcomes["key-0000"].attempts == 0
    assert outcomes["key-0000"].error.startswith("message cannot be encoded")
    assert outcomes["key-0001"].status == "delivered"
    assert len(json.loads(calls[0][1])["messages"]) == 1


# --- rate limit -----------------------------------------------------------------------------------

def test_rate_limit_spaces_the_requests():
    with Receiver(SECRET) as receiver:
        list(send(_messages(10), _settings(receiver.url, batch_size=1, rate_per_second=20), SECRET))
        requests = receiver.requests
    assert len(requests) == 10
    assert requests[-1].at - requests[0].at >= 0.4      # 9 gaps of 1/20 s


def test_rate_limit_is_shared_between_partitions():
    with Receiver(SECRET) as receiver:
        list(send(_messages(6), _settings(receiver.url, batch_size=1, rate_per_second=40), SECRET, share=0.5))
        requests = receiver.requests
    assert len(requests) == 6
    assert requests[-1].at - requests[0].at >= 0.2      # 5 gaps of 1/(40 * 0.5) s


# --- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, words", [
    ({"secret_env": SECRET_ENV}, ["'url'", "missing"]),
    ({"url": "ftp://hooks.example.com/in", "secret_env": SECRET_ENV}, ["'url'", "http://"]),
    ({"url": "https://hooks.example.com/in"}, ["'secret_env'", "missing"]),
    ({"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV, "batchsize": 10},
     ["'batchsize'", "did you mean 'batch_size'"]),
    ({"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV, "batch_size": 0}, ["'batch_size'", "at least 1"]),
    ({"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV, "timeout_seconds": "10"}, ["'timeout_seconds'"]),
    ({"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV, "attempts_per_run": 9},
     ["'attempts_per_run'", "'max_attempts'"]),
    ({"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV, "delete_url": "hooks.example.com/erase"},
     ["'delete_url'"]),
])
def test_config_errors_name_the_destination_and_the_key(settings, words, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with pytest.raises(DestinationConfigError) as err:
        WebhookDestination("crm_hook", settings)
    message = str(err.value)
    assert message.startswith("destination 'crm_hook': ")
    for word in words:
        assert word in message


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_secret_variable_says_which_to_set(value, monkeypatch):
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(DestinationConfigError, match=f"destination 'crm_hook': .*{SECRET_ENV}"):
        WebhookDestination("crm_hook", {"url": "https://hooks.example.com/in", "secret_env": SECRET_ENV})


def test_job_keys_are_accepted_and_defaults_filled(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    dest = WebhookDestination("crm_hook", {"type": "webhook", "url": "https://hooks.example.com/in",
                                           "secret_env": SECRET_ENV, "channel": "crm", "source": "segments",
                                           "segments": ["vip"], "triggers": [], "send_time": "immediate",
                                           "since": "2024-05-01",
                                           "enabled": True})
    assert (dest.name, dest.kind, dest.channel) == ("crm_hook", "webhook", "crm")
    assert {k: dest.settings[k] for k in ("batch_size", "timeout_seconds", "attempts_per_run", "max_attempts",
                                          "backoff_base_seconds", "backoff_max_seconds", "rate_per_second",
                                          "delete_url")} == \
        {"batch_size": 100, "timeout_seconds": 10.0, "attempts_per_run": 4, "max_attempts": 8,
         "backoff_base_seconds": 0.5, "backoff_max_seconds": 30.0, "rate_per_second": 0.0, "delete_url": None}
    assert SECRET not in repr(dest)
    plain = WebhookDestination("plain", {"url": "http://127.0.0.1:1/h", "secret_env": SECRET_ENV})
    assert plain.channel == "webhook"


# --- erasure ------------------------------------------------------------------------------------

def _destination(monkeypatch, receiver: Receiver, delete: bool = True) -> WebhookDestination:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    settings = {"url": receiver.url, "secret_env": SECRET_ENV, "backoff_base_seconds": 0.01}
    if delete:
        settings["delete_url"] = receiver.delete_url
    return WebhookDestination("crm_hook", settings)


def test_erase_posts_the_ids_to_delete_url(monkeypatch):
    with Receiver(SECRET, ["503"]) as receiver:
        dest = _destination(monkeypatch, receiver)
        assert dest.erase(None, ["c2", "c1", "c2"], "run-1") == {"deletion_calls": 1, "customers": 2}
        assert receiver.deletions == [["c1", "c2"]]      # once, after the 503 was retried
        assert receiver.bad_signatures == 0


def test_erase_without_delete_url_calls_nothing(monkeypatch):
    with Receiver(SECRET) as receiver:
        dest = _destination(monkeypatch, receiver, delete=False)
        assert dest.erase(None, ["c1"], "run-1") == {"deletion_calls": 0, "customers": 1}
        assert receiver.deletions == [] and receiver.requests == []


def test_erase_that_fails_raises(monkeypatch):
    with Receiver(SECRET, ["400"]) as receiver:
        dest = _destination(monkeypatch, receiver)
        with pytest.raises(RuntimeError, match="'crm_hook' did not accept the erasure call for 1 customers"):
            dest.erase(None, ["c1"], "run-1")
        assert receiver.deletions == []


def test_erase_idempotency_key(monkeypatch):
    calls = []
    monkeypatch.setattr(webhook, "_post", lambda url, body, headers, timeout: calls.append((body, headers)) or
                        (200, None, "{}"))
    monkeypatch.setenv(SECRET_ENV, SECRET)
    dest = WebhookDestination("crm_hook", {"url": "https://h.example.com/in", "delete_url": "https://h.example.com/del",
                                           "secret_env": SECRET_ENV})
    dest.erase(None, ["c2", "c1"], "run-7")
    (body, headers), = calls
    assert json.loads(body) == {"customer_ids": ["c1", "c2"], "run_id": "run-7"}
    assert headers["Idempotency-Key"] == hashlib.sha256(b"erase\nc1\nc2").hexdigest()


# --- the receiver as a process -------------------------------------------------------------------------

def test_receiver_process_logs_each_applied_key_once(tmp_path: Path):
    log = tmp_path / "keys.log"
    env = {**os.environ, SECRET_ENV: SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "seglake.devtools.receiver", "--secret-env", SECRET_ENV,
                             "--log", str(log), "--script", "drop-after-apply"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        started = json.loads(proc.stdout.readline())
        assert started["pid"] == proc.pid
        outcomes = list(send(_messages(20), _settings(started["url"], batch_size=10), SECRET))
        assert {o.status for o in outcomes} == {"delivered"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert sorted(log.read_text().split()) == [f"key-{i:04d}" for i in range(20)]


# --- logging and the executor side ----------------------------------------------------------------------

def test_failed_attempts_are_logged_without_secret_or_payload(caplog):
    messages = _messages(2)
    messages[0]["payload"] = json.dumps({"email": "someone@example.com"})
    with Receiver(SECRET, ["503", "drop"]) as receiver, caplog.at_level("WARNING", logger=webhook.log.name):
        outcomes = list(send(messages, _settings(receiver.url), SECRET))
    assert {o.status for o in outcomes} == {"delivered"}
    warnings = [r.getMessage() for r in caplog.records if r.name == webhook.log.name]
    assert len(warnings) == 2
    assert "webhook hook: attempt 1 for a batch of 2 messages failed (HTTP 503); next try in" in warnings[0]
    assert "(connection closed without a response)" in warnings[1]
    assert not any(SECRET in w or "someone@example.com" in w for w in warnings)


def test_partition_function_turns_rows_into_outcome_tuples():
    import pickle
    from functools import partial

    from pyspark.sql import Row

    with Receiver(SECRET) as receiver:
        settings = _settings(receiver.url, batch_size=2)
        task = pickle.loads(pickle.dumps(partial(webhook._partition, settings, SECRET, 0.5)))
        rows = [Row(**m) for m in _messages(3)]
        out = list(task(iter(rows)))
    assert out == [(f"key-{i:04d}", "delivered", 1, "HTTP 200", None) for i in range(3)]
