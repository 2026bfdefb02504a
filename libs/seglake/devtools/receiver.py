"""A real local webhook receiver with scripted faults, for the tests and the activation demo.

It listens on 127.0.0.1 (a free port), verifies the ``X-Seglake-Signature`` of each request
when given the secret, and applies each message once by its ``idempotency_key``, the way a
well-behaved webhook consumer does; later deliveries of an applied key are counted as
duplicates. Each POST consumes the next action of ``script`` (then, when the script is spent,
a random fault with probability ``fail_rate`` from a seeded generator, else ``ok``):

* ``ok``                 -- apply, answer 200
* ``<code>``             -- answer that status (``500``, ``503``, ``400``, ...); applied only for a 2xx
* ``429:<s>``            -- answer 429 with ``Retry-After: <s>``, not applied
* ``slow:<s>``           -- wait ``s`` seconds, apply, answer 200
* ``timeout:<s>``        -- apply, then wait ``s`` seconds before answering 200: a client with a shorter
  timeout gives up and retries, and the retry is a duplicate (the real-world case); with
  ``timeout_applies=False`` they are not applied (a receiver that rolls back on a late answer)
* ``drop``               -- read the request, close the connection without an answer, not applied
* ``drop-after-apply``   -- apply, then close without an answer

``POST /hook`` takes message batches, ``POST /delete`` erasure calls (recorded in
:attr:`Receiver.deletions`); both consume the script. ``GET /stats`` answers the counts.

Command line (a separate process a test can keep running while it kills exporters)::

    python -m seglake.devtools.receiver --port P --secret-env VAR --log FILE [--script 503,drop,ok]

prints ``{"url": ..., "delete_url": ..., "pid": ...}`` once it listens and appends each newly
applied key to FILE (one per line, flushed) until SIGTERM.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from seglake.devtools.procs import HOST

log = logging.getLogger("seglake.devtools.receiver")

#: the random faults drawn when the script is spent and ``fail_rate`` > 0
DEFAULT_FAULTS = ("500", "503", "drop", "drop-after-apply")


class Request(NamedTuple):
    """One POST /hook as the receiver saw it."""
    at: float                    # time.monotonic() when the body was read
    action: str                  # the script action applied ("bad-signature" when rejected as 401)
    messages: int
    idempotency_key: str | None  # the request's Idempotency-Key header


def _verify(secret: str, timestamp: str | None, signature: str | None, body: bytes) -> bool:
    if not timestamp or not signature:
        return False
    expected = hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, "sha256=" + expected)


class Receiver:
    """A threaded HTTP receiver on 127.0.0.1 (``with Receiver(...) as r: ... r.url``)."""

    def __init__(self, secret: str | None = None, script: list[str] | None = None, seed: int = 0,
                 fail_rate: float = 0.0, *, faults: tuple[str, ...] = DEFAULT_FAULTS, port: int | None = None,
                 log_path: str | Path | None = None, timeout_applies: bool = True):
        self.secret = secret
        self.fail_rate = fail_rate
        self.faults = tuple(faults)
        self.timeout_applies = timeout_applies
        self._script = list(script or [])
        self._rng = random.Random(seed)
        self._port = port
        self._log_path = Path(log_path) if log_path else None
        self._log_file = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.applied: dict[str, dict] = {}
        self._duplicates = 0
        self._bad_signatures = 0
        self._requests: list[Request] = []
        self._deletions: list[list[str]] = []

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Receiver":
        if self._server is not None:
            return self
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self._log_path, "a", encoding="utf-8")
        handler = type("Handler", (_Handler,), {"receiver": self})
        self._server = ThreadingHTTPServer((HOST, self._port or 0), handler)  # 0: the OS picks a free port
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="seglake-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()   # wakes handlers sleeping in slow/timeout actions
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    @property
    def delete_url(self) -> str:
        return f"http://{HOST}:{self.port}/delete"

    # --- what it saw -------------------------------------------------------------------------
    def received_keys(self) -> set[str]:
        with self._lock:
            return set(self.applied)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self._duplicates

    @property
    def bad_signatures(self) -> int:
        with self._lock:
            return self._bad_signatures

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def deletions(self) -> list[list[str]]:
        with self._lock:
            return [list(ids) for ids in self._deletions]

    def stats(self) -> dict:
        with self._lock:
            return {"applied": len(self.applied), "duplicates": self._duplicates, "requests": len(self._requests),
                    "bad_signatures": self._bad_signatures, "deletions": len(self._deletions)}

    # --- used by the handler -----------------------------------------------------------------
    def queue(self, *actions: str) -> None:
        """Append fault actions to the script (consumed by the next requests, in order)."""
        with self._lock:
            self._script.extend(actions)

    def next_action(self) -> str:
        with self._lock:
            if self._script:
                return self._script.pop(0)
            if self.fail_rate and self._rng.random() < self.fail_rate:
                return self._rng.choice(self.faults)
            return "ok"

    def record(self, request: Request, bad_signature: bool = False) -> None:
        with self._lock:
            self._requests.append(request)
            self._bad_signatures += bad_signature

    def apply(self, messages: list[dict]) -> None:
        with self._lock:
            for message in messages:
                key = message.get("idempotency_key")
                if key in self.applied:
                    self._duplicates += 1
                    continue
                self.applied[key] = message
                if self._log_file is not None:
                    self._log_file.write(f"{key}\n")
            if self._log_file is not None:
                self._log_file.flush()

    def record_deletion(self, customer_ids: list[str], bad_signature: bool = False) -> None:
        with self._lock:
            if bad_signature:
                self._bad_signatures += 1
            else:
                self._deletions.append(list(customer_ids))

    def pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver
    server_version = "seglake-receiver"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 -- the stdlib's name
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, code: int, text: str = "", headers: dict[str, str] | None = None) -> bool:
        """Write an answer; False when the client is gone (it timed out)."""
        data = text.encode("utf-8")
        try:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json" if text.startswith("{") else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
        if self.path == "/stats":
            self._answer(200, json.dumps(self.receiver.stats()))
        else:
            self._answer(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        if self.path not in ("/hook", "/delete"):
            self._answer(404, "not found")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        at = time.monotonic()
        receiver = self.receiver
        signed = receiver.secret is None or _verify(receiver.secret, self.headers.get("X-Seglake-Timestamp"),
                                                    self.headers.get("X-Seglake-Signature"), body)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if self.path == "/delete":
            self._delete(document, signed)
            return
        messages = document.get("messages") if isinstance(document, dict) else None
        key = self.headers.get("Idempotency-Key")
        if not signed:
            receiver.record(Request(at, "bad-signature", len(messages or []), key), bad_signature=True)
            self._answer(401, "bad or missing signature")
            return
        if not isinstance(messages, list):
            receiver.record(Request(at, "malformed", 0, key))
            self._answer(400, "the body must be {\"messages\": [...]}")
            return
        action = receiver.next_action()
        receiver.record(Request(at, action, len(messages), key))
        self._act(action, lambda: receiver.apply(messages), len(messages))

    def _delete(self, document, signed: bool) -> None:
        ids = document.get("customer_ids") if isinstance(document, dict) else None
        if not signed:
            self.receiver.record_deletion([], bad_signature=True)
            self._answer(401, "bad or missing signature")
            return
        if not isinstance(ids, list):
            self._answer(400, "the body must be {\"customer_ids\": [...], \"run_id\": ...}")
            return
        self._act(self.receiver.next_action(), lambda: self.receiver.record_deletion(ids), len(ids))

    def _act(self, action: str, apply, n: int) -> None:
        name, _, arg = action.partition(":")
        ok = json.dumps({"accepted": n})
        if name == "ok":
            apply()
            self._answer(200, ok)
        elif name == "slow":
            self.receiver.pause(float(arg))
            apply()
            self._answer(200, ok)
        elif name == "timeout":
            if self.receiver.timeout_applies:
                apply()
            self.receiver.pause(float(arg))
            self._answer(200, ok)
        elif name in ("drop", "drop-after-apply"):
            if name == "drop-after-apply":
                apply()
            self.close_connection = True   # no answer: the server closes the socket
        elif name == "429":
            self._answer(429, "slow down", {"Retry-After": arg or "1"})
        elif name.isdigit():
            code = int(name)
            if 200 <= code < 300:
                apply()
            self._answer(code, ok if 200 <= code < 300 else f"scripted answer {code}")
        else:
            self._answer(500, f"unknown scripted action {action!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seglake.devtools.receiver",
                                     description="A local webhook receiver with scripted faults.")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--secret-env", default=None, help="variable holding the HMAC key (default: no check)")
    parser.add_argument("--log", default=None, help="file to append each newly applied key to")
    parser.add_argument("--script", default="", help="comma-separated actions, e.g. 503,drop,ok")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    secret = None
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            print(f"error: the environment variable {args.secret_env} is not set", file=sys.stderr)
            return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    script = [a.strip() for a in args.script.split(",") if a.strip()]
    with Receiver(secret, script, args.seed, args.fail_rate, port=args.port, log_path=args.log) as receiver:
        print(json.dumps({"url": receiver.url, "delete_url": receiver.delete_url, "pid": os.getpid()}), flush=True)
        while not done.wait(0.5):
            pass
        print(json.dumps(receiver.stats()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
