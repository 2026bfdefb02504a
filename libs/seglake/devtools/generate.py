"""Synthetic behavioural events with planted ground truth (``seglake generate``).

Two steps, both in Spark:

1. **Simulation** (``mapInPandas`` over ``spark.range(customers)``): each person gets an
   archetype, identifiers, and a sequence of sessions whose journey events follow the
   archetype's Markov chain (``CHAINS``). A per-person simulation is sequential (state by
   state, with re-draws until the archetype's planted fact holds), which higher-order
   column functions cannot express readably; ``mapInPandas`` streams one batch of persons
   at a time (memory bounded by the batch, not by the event count) and seeds Python's
   ``random.Random`` per (seed, person), so the output does not depend on partitioning.
   The simulation emits only numbers; the result is written as ``ground_truth/events.parquet``.
2. **Rendering** (built-in column functions only): raw spelling variants, timestamp
   formats and offsets, duplicates and malformed records are chosen with hash-based
   randoms (``xxhash64`` of seed, purpose and event) and written as JSON lines, CSV and
   Parquet under ``landing/<format>/<yyyy-mm-dd>/``, plus persons / identifiers /
   transitions Parquet files and ``counts.json``. All counts are exact (aggregated from
   what is written).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core.contracts import RAW_FIELDS

log = logging.getLogger(__name__)


EVENT_TYPES: tuple[str, ...] = (
    "page_view", "search", "product_view", "add_to_cart", "remove_from_cart", "wishlist_add",
    "checkout_start", "purchase", "email_open", "email_click", "push_open", "app_open",
    "feature_use", "video_play", "review", "share", "call_center", "store_purchase",
)
ET = {name: i for i, name in enumerate(EVENT_TYPES)}
EVENT_ALIASES = {"page_view": "pageview", "add_to_cart": "addtocart",
                 "checkout_start": "checkout", "purchase": "order"}

STATES: tuple[str, ...] = ("start", "browse", "search", "product_view", "cart", "checkout",
                           "conversion", "exit")
ST = {name: i for i, name in enumerate(STATES)}
SOURCES = ("web", "app", "crm", "email", "offline")
SRC = {name: i for i, name in enumerate(SOURCES)}
CHANNELS = ("direct", "organic_search", "paid_search", "social", "email", "referral")
CH = {name: i for i, name in enumerate(CHANNELS)}
DEVICE_KINDS = ("ios", "android", "desktop", "tablet")
DEVICE_SPELLINGS = {
    "ios": ["iOS", "ios", "iphone", "iPhone"],
    "android": ["Android", "android", "ANDROID"],
    "desktop": ["desktop", "Desktop", "PC", "Mac", "mac"],
    "tablet": ["tablet", "Tablet", "ipad"],
}
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_SPELLINGS = {"USD": ["USD", "usd", " usd "], "EUR": ["EUR", "eur"], "GBP": ["GBP"]}
CATEGORIES = ("electronics", "books", "home", "garden", "toys", "sports", "beauty", "fashion",
              "grocery", "music", "outdoor", "luxury")
LUXURY = CATEGORIES.index("luxury")
PRODUCTS_PER_CATEGORY = 500
FEATURES = ("wishlist_sync", "price_alerts", "dark_mode", "ar_preview", "voice_search",
            "saved_carts")
EXPERIMENT = "exp_checkout_v2"
KIOSK_BASE = 1000                    # device index >= this = shared store kiosk device
SHARED_DEVICE_PREFIX = "dev_kiosk_"
MALFORMED_KINDS = ("broken_json", "unparseable_ts", "future_ts", "unknown_event_type",
                   "negative_price", "missing_identifiers")
DUPLICATE_KINDS = ("exact_duplicate", "resent", "no_event_id_duplicate")
BAD_TS = ("not-a-date", "2026-13-45T99:99:99Z", "")
UNKNOWN_TYPES = ("pageview_v2", "click_xyz")
OFFSETS = ("+02:00", "-05:00", "+05:30", "+01:00", "+00:00")

# Shares are in 1/10000 of records (hash buckets 0..9999).
NO_EVENT_ID_SHARE = 800              # events written without event_id
EXACT_DUP_SHARE = 150
RESENT_SHARE = 100                   # among events with event_id
NOID_DUP_SHARE = 400                 # among events without event_id
MALFORMED_SHARE = 200
MISSING_DURATION_SHARE = 1500        # of events that have a duration
NULL_DEVICE_TYPE_SHARE = 500

# ---------------------------------------------------------------------------------------------
# Archetypes: share of persons, activity (relative events per person), app share, the Markov
# chain of their web/app sessions (from_state -> [(to_state, p)]; conversion/exit absorb).
# ---------------------------------------------------------------------------------------------
_BROWSY = {
    "start": [("browse", 0.8), ("search", 0.2)],
    "browse": [("browse", 0.35), ("search", 0.1), ("product_view", 0.25), ("exit", 0.3)],
    "search": [("browse", 0.2), ("product_view", 0.4), ("exit", 0.4)],
    "product_view": [("browse", 0.2), ("product_view", 0.35), ("exit", 0.45)],
}
CHAINS: dict[str, dict[str, list[tuple[str, float]]]] = {
    "power_user": {
        "start": [("browse", 0.6), ("search", 0.3), ("product_view", 0.1)],
        "browse": [("browse", 0.25), ("search", 0.2), ("product_view", 0.3), ("exit", 0.25)],
        "search": [("browse", 0.1), ("search", 0.1), ("product_view", 0.5), ("exit", 0.3)],
        "product_view": [("browse", 0.15), ("product_view", 0.3), ("cart", 0.15), ("exit", 0.4)],
        "cart": [("product_view", 0.2), ("checkout", 0.4), ("exit", 0.4)],
        "checkout": [("conversion", 0.6), ("exit", 0.4)],
    },
    "casual_browser": _BROWSY,
    "cart_abandoner": {
        "start": [("browse", 0.6), ("search", 0.2), ("product_view", 0.2)],
        "browse": [("browse", 0.2), ("search", 0.1), ("product_view", 0.4), ("exit", 0.3)],
        "search": [("browse", 0.1), ("product_view", 0.6), ("exit", 0.3)],
        "product_view": [("browse", 0.1), ("product_view", 0.3), ("cart", 0.3), ("exit", 0.3)],
        "cart": [("product_view", 0.3), ("cart", 0.1), ("checkout", 0.15), ("exit", 0.45)],
        "checkout": [("exit", 1.0)],
    },
    "high_intent_abandoner": {
        "start": [("product_view", 0.5), ("search", 0.3), ("browse", 0.2)],
        "browse": [("product_view", 0.6), ("exit", 0.4)],
        "search": [("product_view", 0.8), ("exit", 0.2)],
        "product_view": [("browse", 0.05), ("product_view", 0.55), ("cart", 0.25), ("exit", 0.15)],
        "cart": [("product_view", 0.3), ("exit", 0.7)],
    },
    "repeat_buyer": {
        "start": [("browse", 0.4), ("search", 0.3), ("product_view", 0.3)],
        "browse": [("browse", 0.1), ("search", 0.2), ("product_view", 0.5), ("exit", 0.2)],
        "search": [("product_view", 0.8), ("exit", 0.2)],
        "product_view": [("product_view", 0.25), ("cart", 0.45), ("exit", 0.3)],
        "cart": [("product_view", 0.1), ("checkout", 0.7), ("exit", 0.2)],
        "checkout": [("conversion", 0.85), ("exit", 0.15)],
    },
    "vip": {
        "start": [("browse", 0.3), ("search", 0.2), ("product_view", 0.5)],
        "browse": [("browse", 0.1), ("product_view", 0.7), ("exit", 0.2)],
        "search": [("product_view", 0.9), ("exit", 0.1)],
        "product_view": [("product_view", 0.2), ("cart", 0.6), ("exit", 0.2)],
        "cart": [("product_view", 0.1), ("checkout", 0.8), ("exit", 0.1)],
        "checkout": [("conversion", 0.9), ("exit", 0.1)],
    },
    "churner": {
        "start": [("browse", 0.7), ("search", 0.3)],
        "browse": [("browse", 0.3), ("search", 0.1), ("product_view", 0.3), ("exit", 0.3)],
        "search": [("browse", 0.2), ("product_view", 0.5), ("exit", 0.3)],
        "product_view": [("browse", 0.1), ("product_view", 0.3), ("cart", 0.15), ("exit", 0.45)],
        "cart": [("checkout", 0.4), ("exit", 0.6)],
        "checkout": [("conversion", 0.5), ("exit", 0.5)],
    },
    "new_user": {
        "start": [("browse", 0.9), ("search", 0.1)],
        "browse": [("browse", 0.4), ("search", 0.15), ("product_view", 0.2), ("exit", 0.25)],
        "search": [("browse", 0.3), ("product_view", 0.4), ("exit", 0.3)],
        "product_view": [("browse", 0.2), ("product_view", 0.2), ("cart", 0.1), ("exit", 0.5)],
        "cart": [("checkout", 0.3), ("exit", 0.7)],
        "checkout": [("conversion", 0.5), ("exit", 0.5)],
    },
    "email_responder": {
        "start": [("product_view", 0.7), ("browse", 0.3)],
        "browse": [("browse", 0.1), ("product_view", 0.5), ("exit", 0.4)],
        "product_view": [("product_view", 0.2), ("cart", 0.4), ("exit", 0.4)],
        "cart": [("checkout", 0.7), ("exit", 0.3)],
        "checkout": [("conversion", 0.8), ("exit", 0.2)],
    },
}
ARCHETYPES: dict[str, dict] = {
    # share of persons, activity factor, share of app sessions
    "power_user": {"share": 0.10, "activity": 3.0, "app": 0.6},
    "casual_browser": {"share": 0.20, "activity": 0.7, "app": 0.2},
    "cart_abandoner": {"share": 0.12, "activity": 0.8, "app": 0.3},
    "high_intent_abandoner": {"share": 0.08, "activity": 0.8, "app": 0.3},
    "repeat_buyer": {"share": 0.12, "activity": 1.2, "app": 0.3},
    "vip": {"share": 0.04, "activity": 2.0, "app": 0.3},
    "churner": {"share": 0.12, "activity": 0.6, "app": 0.3},
    "new_user": {"share": 0.08, "activity": 0.3, "app": 0.3},
    "email_responder": {"share": 0.14, "activity": 1.0, "app": 0.1},
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCHETYPES)
_ACTIVITY_NORM = sum(a["share"] * a["activity"] for a in ARCHETYPES.values())
_MUST_LOG_IN = {"power_user", "repeat_buyer", "vip", "email_responder"}

_SIM_SCHEMA = (
    "pid LONG, seq INT, ts_ms LONG, etype INT, state INT, src INT, sess INT, chan INT, "
    "uid BOOLEAN, anon INT, dev INT, dev_kind INT, email INT, phone BOOLEAN, product INT, "
    "qty INT, price_c LONG, revenue_c LONG, dur_ms LONG, scroll INT, feature INT, variant INT, "
    "arch INT, consent BOOLEAN, currency INT, has_uid BOOLEAN"
)
_SIM_COLS = [part.split()[0] for part in _SIM_SCHEMA.split(", ")]

DAY_MS = 86_400_000
MIN_SESSION_GAP_MS = 50 * 60_000     # > 45 min between sessions even after side events


# =============================================================================================
# Per-person simulation (plain Python, runs inside mapInPandas)
# =============================================================================================
def _pick(rng: random.Random, options: list[tuple[str, float]]) -> str:
    x = rng.random()
    acc = 0.0
    for name, p in options:
        acc += p
        if x < acc:
            return name
    return options[-1][0]


def _product_price_c(product: int) -> int:
    base = 500 + (product * 7919) % 19_500                 # 5.00 .. 199.99
    return base * 10 if product // PRODUCTS_PER_CATEGORY == LUXURY else base


class _Person:
    """Simulates one person's sessions; ``events`` is a list of column tuples."""

    def __init__(self, pid: int, seed: int, start_ms: int, end_ms: int, mean_events: float,
                 kiosks: int, kiosk_share: float):
        self.pid = pid
        r = self.rng = random.Random(f"seglake:{seed}:{pid}")
        names, shares = ARCH_NAMES, [ARCHETYPES[a]["share"] for a in ARCH_NAMES]
        self.arch = r.choices(range(len(names)), weights=shares)[0]
        self.arch_name = names[self.arch]
        self.chain = CHAINS[self.arch_name]
        a = ARCHETYPES[self.arch_name]
        self.app_share = a["app"]
        self.has_uid = self.arch_name in _MUST_LOG_IN or r.random() > 0.12
        self.n_dev = 1 if not self.has_uid else (2 if r.random() < 0.45 else 1)
        self.dev_kinds = []
        for _ in range(self.n_dev):
            x = r.random()
            self.dev_kinds.append(0 if x < 0.32 else 1 if x < 0.6 else 2 if x < 0.9 else 3)
        self.n_cookie = r.choice((1, 1, 2, 2, 3))
        if not self.has_uid:
            self.n_email = 0
        elif self.arch_name in ("email_responder", "vip", "repeat_buyer"):
            self.n_email = 1 if r.random() < 0.75 else 2
        else:
            x = r.random()
            self.n_email = 0 if x < 0.25 else 1 if x < 0.8 else 2
        self.has_phone = self.has_uid and r.random() < 0.4
        self.consent = r.random() > 0.03
        x = r.random()
        self.currency = 0 if x < 0.7 else 1 if x < 0.9 else 2
        self.variant = 0 if r.random() < 0.5 else 1
        self.fav_cat = LUXURY if self.arch_name == "vip" else r.randrange(len(CATEGORIES) - 1)
        self.kiosk = (KIOSK_BASE + r.randrange(kiosks)) if (
            kiosks and self.has_uid and r.random() < kiosk_share) else -1
        span = end_ms - start_ms
        if self.arch_name == "churner":
            self.a_start, self.a_end = start_ms, start_ms + span // 2
        elif self.arch_name == "new_user":
            self.a_start, self.a_end = end_ms - 7 * DAY_MS + 3_600_000, end_ms
        else:
            self.a_start, self.a_end = start_ms + int(r.random() * 0.25 * span), end_ms
        noise = r.lognormvariate(0.0, 0.35) / 1.0632       # mean 1
        self.target = max(3.0, mean_events * a["activity"] / _ACTIVITY_NORM * noise)

    # -- one session's content: list of [etype, state, gap_s, product, qty, price_c, revenue_c,
    #    scroll, feature, channel override]; identifiers are attached at placement ----------------
    def _journey(self, app: bool, fast: bool) -> list[list]:
        r, out = self.rng, []
        state, last_product, cart = "start", -1, []
        feature_p = 0.35 if self.arch_name == "power_user" else (0.05 if app else 0.0)
        while len(out) < 80:
            nxt = _pick(r, self.chain[state])
            if nxt == "exit":
                break
            gap = int(5 + r.random() * 85) if fast else min(300, int(5 + r.expovariate(1 / 40)))
            if nxt == "browse":
                et = ET["app_open"] if (app and not out) else ET["page_view"]
                out.append([et, ST[nxt], gap, -1, -1, -1, -1, r.randrange(101), -1])
            elif nxt == "search":
                out.append([ET["search"], ST[nxt], gap, -1, -1, -1, -1, -1, -1])
            elif nxt == "product_view":
                cat = self.fav_cat if r.random() < 0.7 else r.randrange(len(CATEGORIES))
                last_product = cat * PRODUCTS_PER_CATEGORY + r.randrange(PRODUCTS_PER_CATEGORY)
                out.append([ET["product_view"], ST[nxt], gap, last_product, -1,
                            _product_price_c(last_product), -1, r.randrange(101), -1])
                x = r.random()
                if x < 0.04:
                    out.append([ET["wishlist_add"], -1, int(5 + r.random() * 30), last_product,
                                -1, _product_price_c(last_product), -1, -1, -1])
                elif x < 0.06:
                    out.append([ET["share"], -1, int(5 + r.random() * 30), last_product,
                                -1, -1, -1, -1, -1])
                elif x < 0.09:
                    out.append([ET["video_play"], -1, int(5 + r.random() * 60), last_product,
                                -1, -1, -1, -1, -1])
                elif x < 0.10:
                    out.append([ET["review"], -1, int(20 + r.random() * 200), last_product,
                                -1, -1, -1, -1, -1])
            elif nxt == "cart":
                if last_product < 0:
                    last_product = self.fav_cat * PRODUCTS_PER_CATEGORY + r.randrange(PRODUCTS_PER_CATEGORY)
                qty = 1 + (r.random() < 0.25) + (r.random() < 0.1)
                cart.append((last_product, qty))
                out.append([ET["add_to_cart"], ST[nxt], gap, last_product, qty,
                            _product_price_c(last_product), -1, -1, -1])
                if r.random() < 0.08:
                    out.append([ET["remove_from_cart"], -1, int(5 + r.random() * 60), last_product,
                                1, _product_price_c(last_product), -1, -1, -1])
            elif nxt == "checkout":
                total = sum(_product_price_c(p) * q for p, q in cart) or _product_price_c(max(last_product, 0))
                out.append([ET["checkout_start"], ST[nxt], gap, -1, -1, -1, total, -1, -1])
            elif nxt == "conversion":
                if not cart:
                    cart.append((max(last_product, 0), 1))
                total = sum(_product_price_c(p) * q for p, q in cart)
                prod, _ = cart[-1]
                out.append([ET["purchase"], ST[nxt], gap, prod, sum(q for _, q in cart),
                            _product_price_c(prod), total, -1, -1])
                break
            if feature_p and app and r.random() < feature_p:
                out.append([ET["feature_use"], -1, int(5 + r.random() * 60), -1, -1, -1, -1, -1,
                            r.randrange(len(FEATURES))])
            state = nxt
        return out

    def _new_session(self, kind: str) -> dict:
        r = self.rng
        s = {"kind": kind, "events": []}
        if kind in ("regular", "email"):
            dev = r.randrange(self.n_dev)
            mobile = self.dev_kinds[dev] != 2
            app = kind == "regular" and mobile and r.random() < self.app_share
            s.update(dev=dev, app=app)
            if kind == "email":
                s["chan"] = CH["email"]
            else:
                x = r.random()
                s["chan"] = (CH["direct"] if x < 0.35 else CH["organic_search"] if x < 0.65 else
                             CH["paid_search"] if x < 0.8 else CH["social"] if x < 0.92 else CH["referral"])
            s["events"] = self._journey(app, self.arch_name == "high_intent_abandoner")
        return s

    def _session_kinds(self) -> str:
        r, x = self.rng, self.rng.random()
        if not self.has_uid:
            return "regular"
        if self.arch_name == "email_responder":
            return "email" if x < 0.4 else "email_open" if x < 0.5 else "regular"
        if self.n_email and x < 0.03:
            return "email_open"
        if x < 0.05:
            return "call_center"
        if x < 0.07:
            return "store"
        return "regular"

    # -- planted facts: re-draw a session's journey until it holds ----------------------------
    @staticmethod
    def _count(sessions: list[dict], etype: int) -> int:
        return sum(1 for s in sessions for e in s["events"] if e[0] == etype)

    @staticmethod
    def _high_intent(events: list[list]) -> bool:
        t, pv = 0, []
        has_cart = False
        for e in events:
            t += e[2]
            if e[0] == ET["product_view"]:
                pv.append(t)
            if e[0] == ET["add_to_cart"] and len(pv) >= 3 and any(
                    pv[i + 2] - pv[i] <= 600 for i in range(len(pv) - 2)):
                has_cart = True
        return has_cart

    def _ensure(self, sessions: list[dict], ok, redraw_pred, limit: int = 400) -> None:
        """Re-draw regular/email sessions (from the last) until ``ok(sessions)`` holds."""
        tries = 0
        idx = [i for i, s in enumerate(sessions) if s["kind"] in ("regular", "email")]
        while not ok(sessions) and tries < limit and idx:
            i = idx[-1 - (tries // 25) % len(idx)]
            s = sessions[i]
            events = self._journey(s["app"], self.arch_name == "high_intent_abandoner")
            if redraw_pred(events):
                s["events"] = events
            tries += 1

    def simulate(self) -> list[tuple]:
        r = self.rng
        span_capacity = max(1, (self.a_end - self.a_start) // (2 * 3_600_000))
        sessions: list[dict] = []
        total = 0
        while total < self.target and len(sessions) < span_capacity:
            s = self._new_session(self._session_kinds() if sessions else "regular")
            sessions.append(s)
            total += max(1, len(s["events"]))
        name = self.arch_name
        purchase = ET["purchase"]
        if name == "cart_abandoner":
            self._ensure(sessions, lambda ss: self._count(ss, ET["add_to_cart"]) >= 1,
                         lambda ev: any(e[0] == ET["add_to_cart"] for e in ev))
        elif name == "high_intent_abandoner":
            self._ensure(sessions, lambda ss: any(self._high_intent(s["events"]) for s in ss),
                         self._high_intent)
        elif name in ("repeat_buyer", "vip"):
            need = 3 if name == "repeat_buyer" else 5
            while len([s for s in sessions if s["kind"] == "regular"]) < need:
                sessions.append(self._new_session("regular"))
            self._ensure(sessions, lambda ss: self._count(ss, purchase) >= need,
                         lambda ev: bool(ev) and ev[-1][0] == purchase, limit=2000)
        elif name == "email_responder":
            if not any(s["kind"] == "email" for s in sessions):
                sessions.append(self._new_session("email"))
            mails = [s for s in sessions if s["kind"] == "email"]
            self._ensure(mails, lambda ss: self._count(ss, purchase) >= 1,
                         lambda ev: bool(ev) and ev[-1][0] == purchase)
        if name == "power_user":
            used = {e[8] for s in sessions for e in s["events"] if e[0] == ET["feature_use"]}
            missing = [f for f in range(len(FEATURES)) if f not in used][: max(0, 3 - len(used))]
            regular = [s for s in sessions if s["kind"] == "regular"]
            for k, f in enumerate(missing):
                regular[-1 - (k % len(regular))]["events"].append(
                    [ET["feature_use"], -1, int(5 + r.random() * 60), -1, -1, -1, -1, -1, f])
        # identifiers that would otherwise never be linked get a CRM contact
        emails_used = {0} if any(s["kind"] in ("email", "email_open") for s in sessions) else set()
        for k in range(self.n_email):
            if k not in emails_used:
                sessions.append({"kind": "call_center", "events": [], "email": k})
        if self.has_phone:
            sessions.append({"kind": "call_center", "events": [], "phone": True})
        if self.kiosk >= 0:
            sessions.append({"kind": "store", "events": [], "kiosk": True})
        sessions = [s for s in sessions if s["events"] or s["kind"] not in ("regular", "email")]
        return self._place(sessions)

    # -- timeline and identifiers ---------------------------------------------------------------
    def _place(self, sessions: list[dict]) -> list[tuple]:
        r = self.rng
        # side-event-only sessions stay where they were drawn; CRM fix-ups go to random places
        durations = []
        for s in sessions:
            if s["kind"] == "email":
                s["events"] = ([[ET["email_open"], -1, 0, -1, -1, -1, -1, -1, -1],
                                [ET["email_click"], -1, int(5 + r.random() * 240), -1, -1, -1, -1, -1, -1]]
                               + s["events"])
            elif s["kind"] == "email_open":
                s["events"] = [[ET["email_open"], -1, 0, -1, -1, -1, -1, -1, -1]]
            elif s["kind"] == "call_center":
                s["events"] = [[ET["call_center"], -1, 0, -1, -1, -1, -1, -1, -1]]
            elif s["kind"] == "store":
                prod = self.fav_cat * PRODUCTS_PER_CATEGORY + r.randrange(PRODUCTS_PER_CATEGORY)
                price = _product_price_c(prod)
                s["events"] = [[ET["store_purchase"], -1, 0, prod, 1, price, price, -1, -1]]
            durations.append(sum(e[2] for e in s["events"][1:]) * 1000)
        n = len(sessions)
        free = (self.a_end - self.a_start) - sum(durations) - n * (MIN_SESSION_GAP_MS + 1000)
        free = max(0, free)
        offsets = sorted(r.randrange(free + 1) for _ in range(n))
        rows: list[tuple] = []
        seen_dev: set[int] = set()
        seen_cookie: set[int] = set()
        cookies_of = {d: [c for c in range(self.n_cookie) if c % self.n_dev == d] or [d % self.n_cookie]
                      for d in range(self.n_dev)}
        cursor = self.a_start
        seq = 0
        for sess_no, (s, off, dur) in enumerate(zip(sessions, offsets, durations)):
            start = (self.a_start + off + sess_no * (MIN_SESSION_GAP_MS + 1000)
                     + sum(durations[:sess_no]))
            start = max(start, cursor) // 1000 * 1000
            kind, events = s["kind"], s["events"]
            dev = s.get("dev", -1)
            app = s.get("app", False)
            chan = s.get("chan", CH["email"] if kind in ("email", "email_open") else -1)
            src = (SRC["app"] if app else SRC["web"]) if kind in ("regular", "email") else (
                SRC["email"] if kind == "email_open" else SRC["crm"] if kind == "call_center" else SRC["offline"])
            cookie = -1
            login_at = -1
            if kind in ("regular", "email"):
                if not app:
                    fresh = [c for c in cookies_of[dev] if c not in seen_cookie]
                    cookie = fresh[0] if fresh else r.choice(cookies_of[dev])
                first_time = dev not in seen_dev or (cookie >= 0 and cookie not in seen_cookie)
                seen_dev.add(dev)
                if cookie >= 0:
                    seen_cookie.add(cookie)
                if self.has_uid and (first_time or kind == "email" or r.random() < (0.8 if app else 0.45)):
                    login_at = 0 if (first_time or r.random() < 0.6) else r.randrange(max(1, len(events)))
            t = start
            for k, e in enumerate(events):
                et, state, gap, prod, qty, price_c, revenue_c, scroll, feature = e
                t += gap * 1000
                ms = r.randrange(1, 1000) if r.random() < 0.3 else 0
                nxt_gap = events[k + 1][2] if k + 1 < len(events) else 0
                is_email_evt = et in (ET["email_open"], ET["email_click"])
                # identifiers on this event
                uid = False
                anon = dv = em = -1
                ph = False
                if et in (ET["email_open"], ET["email_click"]):
                    uid, em = True, 0
                elif kind == "call_center":
                    uid = True
                    if s.get("phone"):
                        ph = True
                    elif "email" in s:
                        em = s["email"]
                    elif self.has_phone and r.random() < 0.6:  # noqa: SIM114
                        ph = True
                    elif self.n_email:
                        em = r.randrange(self.n_email)
                elif kind == "store":
                    uid = True
                    em = r.randrange(self.n_email) if self.n_email else -1
                    dv = self.kiosk if s.get("kiosk") else -1
                    ph = dv < 0 and em < 0 and self.has_phone
                else:
                    first = k == (2 if kind == "email" else 0)
                    logged = login_at >= 0 and (k - (2 if kind == "email" else 0)) >= login_at
                    uid = logged
                    if app:
                        dv = dev
                    else:
                        anon = cookie
                        linking = first or (logged and (k - (2 if kind == "email" else 0)) == login_at)
                        dv = dev if (linking or r.random() < 0.7) else -1
                if kind == "email" and is_email_evt:
                    uid, em = True, 0
                dur = -1
                if et in (ET["page_view"], ET["product_view"], ET["search"], ET["app_open"],
                          ET["video_play"], ET["feature_use"]):
                    dur = (int(nxt_gap * 1000 * (0.3 + 0.6 * r.random())) if nxt_gap
                           else int(2000 + r.random() * 60_000))
                echan = chan if (kind in ("regular", "email") or is_email_evt) else -1
                variant = self.variant if et in (ET["checkout_start"], ET["purchase"]) else -1
                rows.append((
                    self.pid, seq, t + ms, et, state, SRC["email"] if is_email_evt else src, sess_no, echan,
                    uid and self.has_uid, anon, dv, self.dev_kinds[dev] if (dev >= 0 and not is_email_evt) else -1,
                    em, ph, prod, qty, price_c, revenue_c, dur, scroll, feature, variant,
                    self.arch, self.consent, self.currency, self.has_uid,
                ))
                seq += 1
            cursor = t + 1000 + MIN_SESSION_GAP_MS
        return rows


def _simulate_batches(seed: int, start_ms: int, end_ms: int, mean_events: float, kiosks: int,
                      kiosk_share: float):
    """The mapInPandas function: person ids in, simulated event rows out (numbers only)."""
    import pandas as pd

    def run(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        for batch in batches:
            ids = batch["id"].tolist()
            for lo in range(0, len(ids), 500):               # bound memory per yielded frame
                rows: list[tuple] = []
                for pid in ids[lo:lo + 500]:
                    rows.extend(_Person(int(pid), seed, start_ms, end_ms, mean_events,
                                        kiosks, kiosk_share).simulate())
                yield pd.DataFrame.from_records(rows, columns=_SIM_COLS)
    return run


# =============================================================================================
# Rendering (built-in Spark functions only)
# =============================================================================================
def _arr(values) -> Column:
    return F.array(*[F.lit(v) for v in values])


def _pick_col(values, bucket: Column) -> Column:
    """``values[bucket % len(values)]`` as a column."""
    return F.element_at(_arr(values), (F.pmod(bucket, F.lit(len(values))) + 1).cast("int"))


def _h(seed: int, purpose: str, *cols: Column) -> Column:
    """Deterministic hash bucket 0..9999 of (seed, purpose, cols)."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(purpose), *cols), F.lit(10_000)).cast("int")


def _hexid(seed: int, prefix: str, *cols: Column, length: int = 24) -> Column:
    return F.concat(F.lit(prefix), F.substring(
        F.sha2(F.concat_ws(":", F.lit(str(seed)), F.lit(prefix), *[c.cast("string") for c in cols]), 256),
        1, length))


def sim_to_truth(sim: DataFrame, seed: int) -> DataFrame:
    """Readable per-event truth (identifier strings, canonical names) from simulation rows.

    Args:
        sim: rows of the simulation (``_SIM_SCHEMA``).
        seed: generator seed (identifier hashes depend on it).

    Returns:
        One row per valid event: ``event_uid``, ``person_id``, ``event_id`` (null when the raw
        record carries none), identifier strings as written raw, ``event_type`` (canonical),
        ``ts_ms``, ``event_ts`` (UTC timestamp), ``state``, ``session_no``, ``source``,
        ``channel`` and the numeric columns the renderer needs.
    """
    uid_col = (F.col("pid") * F.lit(1 << 24) + F.col("seq")).alias("event_uid")
    pid = F.col("pid")
    first_names = ("alex", "sam", "maria", "li", "noor", "jan", "ana", "tom", "eva", "raj")
    domains = ("example.com", "mail.example.org", "inbox.example.net")
    return sim.select(
        uid_col, "*",
    ).select(
        "event_uid",
        F.format_string("P%08d", pid).alias("person_id"),
        "pid", "seq", "ts_ms",
        F.timestamp_millis(F.col("ts_ms")).alias("event_ts"),
        F.when(_h(seed, "eid", F.col("event_uid")) >= NO_EVENT_ID_SHARE,
               _hexid(seed, "evt_", F.col("event_uid"))).alias("event_id"),
        F.when(F.col("uid"), _hexid(seed, "usr_", pid, length=20)).alias("user_id"),
        F.when(F.col("anon") >= 0, _hexid(seed, "anon_", pid, F.col("anon"))).alias("anonymous_id"),
        F.when(F.col("dev") >= KIOSK_BASE,
               F.format_string(SHARED_DEVICE_PREFIX + "%03d", F.col("dev") - KIOSK_BASE))
        .when(F.col("dev") >= 0, _hexid(seed, "dev_", pid, F.col("dev"))).alias("device_id"),
        F.when(F.col("email") >= 0, F.format_string(
            "%s.%d@%s", _pick_col(first_names, pid), pid * 3 + F.col("email"),
            _pick_col(domains, F.xxhash64(F.lit(seed), pid)))).alias("email"),
        F.when(F.col("phone"), F.format_string("+1%d", pid + F.lit(2_000_000_000))).alias("phone"),
        F.element_at(_arr(EVENT_TYPES), F.col("etype") + 1).alias("event_type"),
        "etype",
        F.when(F.col("state") >= 0, F.element_at(_arr(STATES), F.col("state") + 1)).alias("state"),
        F.col("sess").alias("session_no"),
        F.element_at(_arr(SOURCES), F.col("src") + 1).alias("source"),
        F.when(F.col("chan") >= 0, F.element_at(_arr(CHANNELS), F.col("chan") + 1)).alias("channel"),
        "chan", "src", "dev_kind", "product", "qty", "price_c", "revenue_c", "dur_ms", "scroll",
        "feature", "variant", "consent", "currency", "has_uid",
        F.element_at(_arr(ARCH_NAMES), F.col("arch") + 1).alias("archetype"),
    )


def _fmt_ts(ts_ms: Column, fmt: Column, offset_min: Column, offset_txt: Column) -> Column:
    """Render an instant in one of five raw formats (0 Z, 1 offset+millis, 2 naive UTC,
    3 offset without colon, 4 epoch millis). Session time zone must be UTC."""
    utc = F.timestamp_millis(ts_ms)
    local = F.timestamp_millis(ts_ms + offset_min * F.lit(60_000))
    return (F.when(fmt == 0, F.concat(F.date_format(utc, "yyyy-MM-dd'T'HH:mm:ss"), F.lit("Z")))
            .when(fmt == 1, F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss.SSS"), offset_txt))
            .when(fmt == 2, F.date_format(utc, "yyyy-MM-dd HH:mm:ss"))
            .when(fmt == 3, F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss"),
                                     F.regexp_replace(offset_txt, ":", "")))
            .otherwise(ts_ms.cast("string")))


def _money(cents: Column) -> Column:
    return F.when(cents >= 0, (cents / F.lit(100)).cast("decimal(14,2)").cast("string"))


def truth_to_records(truth: DataFrame, seed: int) -> DataFrame:
    """Every raw record to write: valid events, planted duplicates and malformed records.

    Args:
        truth: output of :func:`sim_to_truth`.
        seed: generator seed.

    Returns:
        The raw contract fields as strings plus typed JSON helpers and bookkeeping columns:
        ``_kind`` (valid | exact_duplicate | resent | no_event_id_duplicate | malformed),
        ``_defect`` (malformed kind or null), ``_fmt`` (json|csv|parquet), ``_day``
        (landing folder), ``_line`` (the JSON line for json records) and ``event_uid``.
    """
    uid = F.col("event_uid")
    has_eid = F.col("event_id").isNotNull()
    hd = _h(seed, "dup", uid)
    dup_kind = (F.when(hd < EXACT_DUP_SHARE, F.lit("exact_duplicate"))
                .when(has_eid & (hd < EXACT_DUP_SHARE + RESENT_SHARE), F.lit("resent"))
                .when(~has_eid & (hd < EXACT_DUP_SHARE + NOID_DUP_SHARE), F.lit("no_event_id_duplicate")))
    mal_kind = F.when(_h(seed, "mal", uid) < MALFORMED_SHARE, F.lit("malformed"))
    df = truth.withColumn("_kind", F.explode(F.filter(F.array(F.lit("valid"), dup_kind, mal_kind),
                                                      lambda x: x.isNotNull())))
    kind = F.col("_kind")
    # exact duplicates are rendered exactly like their original
    ck = F.when(kind.isin("valid", "exact_duplicate"), F.lit("orig")).otherwise(kind)
    df = df.withColumn("_defect", F.when(kind == "malformed", _pick_col(MALFORMED_KINDS, _h(seed, "mk", uid))))
    defect = F.col("_defect")
    hf = _h(seed, "fmt", uid, ck)
    df = df.withColumn("_fmt", F.when(defect == "broken_json", F.lit("json"))
                       .when(hf < 4000, F.lit("json")).when(hf < 7000, F.lit("csv")).otherwise(F.lit("parquet")))
    # timestamp format: instants with millis only in formats that keep them (1, 4)
    ht = _h(seed, "tsf", uid, ck)
    has_ms = F.pmod(F.col("ts_ms"), F.lit(1000)) != 0
    tsf = F.when(has_ms, F.when(ht < 6000, F.lit(1)).otherwise(F.lit(4))).otherwise(
        F.when(ht < 3000, F.lit(0)).when(ht < 5000, F.lit(1)).when(ht < 7000, F.lit(2))
        .when(ht < 8500, F.lit(3)).otherwise(F.lit(4)))
    ho = _h(seed, "off", uid, ck)
    off_txt = _pick_col(OFFSETS, ho)
    off_min = (F.substring(off_txt, 1, 1).eqNullSafe("-").cast("int") * -2 + 1) * (
        F.substring(off_txt, 2, 2).cast("int") * 60 + F.substring(off_txt, 5, 2).cast("int"))
    df = df.withColumn("_tsf", tsf)
    ts_txt = _fmt_ts(F.col("ts_ms"), F.col("_tsf"), off_min, off_txt)
    future = F.concat(F.lit("2099"), F.substring(F.date_format(F.col("event_ts"), "yyyy-MM-dd'T'HH:mm:ss"), 5, 15),
                      F.lit("Z"))
    event_ts = (F.when(defect == "unparseable_ts", _pick_col(BAD_TS, _h(seed, "bad", uid)))
                .when(defect == "future_ts", future).otherwise(ts_txt))
    # event type spelling (same for every copy of an event)
    hv = _h(seed, "etv", uid)
    canonical = F.col("event_type")
    alias = F.element_at(F.create_map(*[F.lit(x) for kv in EVENT_ALIASES.items() for x in kv]), canonical)
    etype = (F.when(defect == "unknown_event_type", _pick_col(UNKNOWN_TYPES, _h(seed, "unk", uid)))
             .when(hv < 8000, canonical).when(hv < 8700, F.upper(canonical))
             .when(hv < 9200, F.initcap(canonical)).otherwise(F.coalesce(alias, canonical)))
    no_ids = defect == "missing_identifiers"

    def ident(name: str) -> Column:
        return F.when(~no_ids | no_ids.isNull(), F.col(name))

    price = _money(F.col("price_c"))
    neg_price = F.concat(F.lit("-"), F.coalesce(price, _money(F.lit(100) + _h(seed, "np", uid))))
    price = F.when(defect == "negative_price", neg_price).otherwise(price)
    dev_spell = F.coalesce(*[
        F.when(F.col("dev_kind") == i, _pick_col(DEVICE_SPELLINGS[k], _h(seed, "dvs", uid)))
        for i, k in enumerate(DEVICE_KINDS)])
    cur_spell = F.coalesce(*[
        F.when(F.col("currency") == i, _pick_col(CURRENCY_SPELLINGS[c], _h(seed, "cur", uid)))
        for i, c in enumerate(CURRENCIES)])
    chan = F.col("channel")
    utm_source = (F.when(chan == "paid_search", F.lit("google")).when(chan == "social", F.lit("facebook"))
                  .when(chan == "email", F.lit("newsletter")).when(chan == "referral", F.lit("partner_blog")))
    utm_medium = (F.when(chan == "paid_search", F.lit("cpc")).when(chan == "social", F.lit("social"))
                  .when(chan == "email", F.lit("email")).when(chan == "referral", F.lit("referral")))
    utm_campaign = (F.when(chan == "paid_search", F.lit("autumn_sale")).when(chan == "social", F.lit("fall_promo"))
                    .when(chan == "email", F.lit("oct_newsletter")))
    category = F.when(F.col("product") >= 0, F.element_at(
        _arr(CATEGORIES), (F.col("product") / F.lit(PRODUCTS_PER_CATEGORY)).cast("int") + 1))
    web_sess = F.col("src").isin(SRC["web"], SRC["app"])
    page_url = F.when(F.col("src") == SRC["web"], F.concat(F.lit("https://shop.example.com"), F.coalesce(
        F.when(F.col("event_type") == "page_view", F.concat(F.lit("/c/"), F.coalesce(category, F.lit("home")))),
        F.when(F.col("event_type") == "product_view", F.format_string("/p/%05d", F.col("product"))),
        F.when(F.col("event_type") == "search", F.lit("/search")),
        F.when(F.col("event_type").isin("add_to_cart", "remove_from_cart"), F.lit("/cart")),
        F.when(F.col("event_type") == "checkout_start", F.lit("/checkout")),
        F.when(F.col("event_type") == "purchase", F.lit("/checkout/confirm")),
        F.lit("/"))))
    props = (F.when(F.col("feature") >= 0, F.create_map(F.lit("feature"), F.element_at(_arr(FEATURES), F.col("feature") + 1)))
             .when(F.col("variant") >= 0, F.create_map(F.lit("experiment"), F.lit(EXPERIMENT), F.lit("variant"),
                                                       F.element_at(_arr(("A", "B")), F.col("variant") + 1))))
    duration = F.when((F.col("dur_ms") >= 0) & (_h(seed, "dur", uid) >= MISSING_DURATION_SHARE), F.col("dur_ms"))
    day_shift = F.when(kind == "resent", F.lit(1) + F.pmod(_h(seed, "rsd", uid), F.lit(2))).otherwise(F.lit(0))
    mal_eid = _hexid(seed, "evm_", uid)
    out = df.select(
        "event_uid", "_kind", "_defect", "_fmt", "_tsf",
        F.date_format(F.date_add(F.to_date(F.col("event_ts")), day_shift), "yyyy-MM-dd").alias("_day"),
        F.when(defect.isNotNull(), mal_eid).otherwise(F.col("event_id")).alias("event_id"),
        ident("user_id").alias("user_id"), ident("anonymous_id").alias("anonymous_id"),
        ident("device_id").alias("device_id"), ident("email").alias("email"), ident("phone").alias("phone"),
        etype.alias("event_type"), event_ts.alias("event_ts"), F.col("source"),
        F.when(web_sess & (_h(seed, "sid", F.col("pid"), F.col("session_no")) >= 1000),
               _hexid(seed, "s_", F.col("pid"), F.col("session_no"), length=16)).alias("session_id"),
        page_url.alias("page_url"),
        F.when(F.col("product") >= 0, F.format_string("SKU-%05d", F.col("product"))).alias("product_id"),
        category.alias("category"),
        price.alias("price"),
        F.when(F.col("qty") >= 0, F.col("qty").cast("string")).alias("quantity"),
        _money(F.col("revenue_c")).alias("revenue"),
        F.when((F.col("price_c") >= 0) | (F.col("revenue_c") >= 0) | (defect == "negative_price"),
               cur_spell).alias("currency"),
        F.when(_h(seed, "dvn", uid) >= NULL_DEVICE_TYPE_SHARE, dev_spell).alias("device_type"),
        utm_source.alias("utm_source"), utm_medium.alias("utm_medium"), utm_campaign.alias("utm_campaign"),
        F.when(_h(seed, "chv", uid) < 800, F.initcap(chan)).otherwise(chan).alias("channel"),
        duration.cast("string").alias("duration_ms"),
        F.when(F.col("scroll") >= 0, F.col("scroll").cast("string")).alias("scroll_depth"),
        F.when(F.col("consent"), F.lit("true")).otherwise(F.lit("false")).alias("consent"),
        F.to_json(props).alias("properties"),
        props.alias("_props"),
        F.col("consent").alias("_consent"),
        duration.isNull().alias("_no_duration"),
        F.abs(_h(seed, "cut", uid)).alias("_cut"),
    )
    typed = F.struct(*[
        (F.col(c).cast("double") if c in ("price", "revenue") else
         F.col(c).cast("int") if c in ("quantity", "scroll_depth") else
         F.col(c).cast("long") if c == "duration_ms" else
         F.col("_consent") if c == "consent" else
         F.col("_props") if c == "properties" else F.col(c)).alias(c)
        for c in RAW_FIELDS])
    line = F.to_json(typed)
    line = F.when(F.col("_tsf") == 4, F.regexp_replace(line, '"event_ts":"([0-9]+)"', '"event_ts":$1')).otherwise(line)
    line = F.when(F.col("_defect") == "broken_json",
                  F.substring(line, 1, F.greatest(F.lit(10), (F.length(line) * (F.lit(0.3) + F.col("_cut") / F.lit(16_000))).cast("int"))))\
        .otherwise(line)
    return out.withColumn("_line", F.when(F.col("_fmt") == "json", line)).drop("_props", "_cut")


# =============================================================================================
# Ground truth tables
# =============================================================================================
def persons_truth(truth: DataFrame, end_date: date) -> DataFrame:
    """One row per person: archetype and the facts planted for it (aggregated from events)."""
    return (truth.groupBy("person_id").agg(
        F.first("archetype").alias("archetype"),
        F.first("has_uid").alias("has_user_id"),
        F.first("consent").alias("consent"),
        F.element_at(_arr(CURRENCIES), F.first("currency") + 1).alias("currency"),
        F.max(F.when(F.col("variant") >= 0, F.element_at(_arr(("A", "B")), F.col("variant") + 1))).alias("variant"),
        F.min("event_ts").alias("first_seen"),
        F.max("event_ts").alias("last_seen"),
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("session_no").alias("sessions"),
        F.sum((F.col("event_type") == "purchase").cast("int")).alias("purchases"),
        F.sum(F.when(F.col("event_type") == "purchase", F.col("revenue_c"))).alias("_rev_c"),
        F.sum((F.col("event_type") == "add_to_cart").cast("int")).alias("carts"),
        F.countDistinct(F.when(F.col("event_type") == "feature_use", F.col("feature"))).alias("distinct_features"),
    ).withColumn("revenue", F.coalesce(F.col("_rev_c") / F.lit(100), F.lit(0.0))).drop("_rev_c")
     .withColumn("churn_date", F.when(F.col("archetype") == "churner",
                                      F.date_add(F.to_date("last_seen"), 1)))
     .withColumn("is_new_user", F.col("first_seen") >= F.lit(
         datetime.combine(end_date - timedelta(days=6), datetime.min.time()))))


def identifiers_truth(truth: DataFrame) -> DataFrame:
    """identifier_type, identifier (as written raw), person_id (null for shared identifiers)."""
    kinds = ("user_id", "anonymous_id", "device_id", "email", "phone")
    exploded = truth.select("person_id", F.explode(F.array(*[
        F.struct(F.lit(k).alias("identifier_type"), F.col(k).alias("identifier")) for k in kinds])).alias("i"))
    ids = exploded.select("i.identifier_type", "i.identifier", "person_id").where(F.col("identifier").isNotNull())
    shared = F.col("identifier").startswith(SHARED_DEVICE_PREFIX)
    return (ids.withColumn("person_id", F.when(~shared, F.col("person_id")))
            .dropDuplicates(["identifier_type", "identifier", "person_id"]))


def transitions_truth(spark: SparkSession) -> DataFrame:
    """The Markov chains used: archetype, from_state, to_state, probability (small, constant)."""
    rows = [(arch, frm, to, float(p)) for arch, chain in CHAINS.items()
            for frm, options in chain.items() for to, p in options]
    return spark.createDataFrame(rows, "archetype STRING, from_state STRING, to_state STRING, probability DOUBLE")


# =============================================================================================
# I/O
# =============================================================================================
def _local_dir(out_dir: str | os.PathLike) -> Path:
    text = str(out_dir)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"generate writes to a local folder; out_dir {text!r} is not local")
    return Path(text.removeprefix("file://")).resolve()


def _tidy_landing(folder: Path, extension: str) -> int:
    """Rename Spark's ``_day=YYYY-MM-DD/part-*.txt`` into ``YYYY-MM-DD/part-*.<ext>``; drop markers."""
    files = 0
    for sub in sorted(folder.iterdir()):
        if sub.is_file():
            sub.unlink()                                   # _SUCCESS, .crc
            continue
        day_dir = folder / sub.name.removeprefix("_day=")
        sub.rename(day_dir)
        for f in sorted(day_dir.iterdir()):
            if f.name.startswith(".") or f.name.startswith("_"):
                f.unlink()
            elif not f.name.endswith(extension):
                f.rename(f.with_name(f.name.split(".")[0] + extension))
                files += 1
            else:
                files += 1
    return files


def generate(spark: SparkSession, out_dir: str | os.PathLike, events: int, customers: int | None = None,
             seed: int = 42, start_date: date = date(2026, 8, 1), end_date: date = date(2026, 10, 31),
             files_per_day: int | None = None) -> dict:
    """Generate landing files and ground truth under ``out_dir``; return the counts.

    Args:
        spark: the session (its time zone is set to UTC while rendering).
        out_dir: local folder; ``landing/`` and ``ground_truth/`` are replaced.
        events: approximate number of valid events (``counts['valid_events']`` is exact).
        customers: number of persons (default ``events // 50``).
        seed: makes the output deterministic.
        start_date, end_date: the event window (inclusive).
        files_per_day: files per format and day (default: 1 per ~2M events, 1..4).

    Returns:
        The dict also written to ``ground_truth/counts.json``.
    """
    if events < 1:
        raise ValueError(f"events must be a positive number, got {events}")
    customers = customers if customers is not None else max(1, events // 50)
    if customers < 1:
        raise ValueError(f"customers must be a positive number, got {customers}")
    if end_date <= start_date:
        raise ValueError(f"end_date {end_date} must be after start_date {start_date}")
    t0 = time.time()
    out = _local_dir(out_dir)
    landing, gt = out / "landing", out / "ground_truth"
    for folder in (landing, gt):
        if folder.exists():
            shutil.rmtree(folder)
    gt.mkdir(parents=True)
    start_ms = int(datetime.combine(start_date, datetime.min.time(), timezone.utc).timestamp() * 1000)
    end_ms = int(datetime.combine(end_date + timedelta(days=1), datetime.min.time(), timezone.utc).timestamp() * 1000) - 1
    # shared store-kiosk devices (giant-component guard): each linked to ~40 user_ids, more
    # than identity.max_persons_per_identifier (20); too few persons to plant one below 60
    kiosks = max(1, customers // 10_000) if customers >= 60 else 0
    kiosk_share = min(0.6, 40.0 * kiosks / customers) if kiosks else 0.0
    mean_events = events / customers
    files_per_day = files_per_day or max(1, min(4, events // 2_000_000))
    if files_per_day < 1:
        raise ValueError(f"files_per_day must be a positive number, got {files_per_day}")

    old_tz = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        parts = max(2, min(400, customers // 4000))
        sim = spark.range(0, customers, 1, parts).mapInPandas(
            _simulate_batches(seed, start_ms, end_ms, mean_events, kiosks, kiosk_share), _SIM_SCHEMA)
        truth_path = str(gt / "events.parquet")
        sim_to_truth(sim, seed).write.mode("overwrite").parquet(truth_path)
        log.info("simulated %d persons in %.1fs", customers, time.time() - t0)
        truth = spark.read.parquet(truth_path)
        persons_truth(truth, end_date).coalesce(1).write.mode("overwrite").parquet(str(gt / "persons.parquet"))
        identifiers_truth(truth).coalesce(1).write.mode("overwrite").parquet(str(gt / "identifiers.parquet"))
        transitions_truth(spark).coalesce(1).write.mode("overwrite").parquet(str(gt / "transitions.parquet"))

        records = truth_to_records(truth, seed)
        bucket = F.pmod(F.col("event_uid"), F.lit(files_per_day))
        files = {}
        for fmt, ext in (("json", ".jsonl"), ("csv", ".csv"), ("parquet", ".parquet")):
            part = records.where(F.col("_fmt") == fmt).repartition("_day", bucket)
            target = landing / fmt
            if fmt == "json":
                part.select("_day", "_line").write.partitionBy("_day").mode("overwrite").text(str(target))
            elif fmt == "csv":
                (part.select("_day", *RAW_FIELDS).write.partitionBy("_day").mode("overwrite")
                 .option("header", True).option("escape", '"').csv(str(target)))
            else:
                part.select("_day", *RAW_FIELDS).write.partitionBy("_day").mode("overwrite").parquet(str(target))
            files[fmt] = _tidy_landing(target, ext)
            log.info("wrote %d %s files (%.1fs)", files[fmt], fmt, time.time() - t0)

        # exact counts from the records just written (one aggregation; the result is tiny)
        agg = records.groupBy("_kind", "_defect", "_fmt").agg(
            F.count(F.lit(1)).alias("n"),
            F.sum((~F.col("_consent")).cast("long")).alias("consent_false"),
            F.sum(F.col("_no_duration").cast("long")).alias("no_duration"),
        ).collect()
        shared = (spark.read.parquet(str(gt / "identifiers.parquet"))
                  .where(F.col("person_id").isNull()).count())
    finally:
        spark.conf.set("spark.sql.session.timeZone", old_tz)

    by_kind = {k: 0 for k in ("valid", *DUPLICATE_KINDS, "malformed")}
    mal_by_kind = {k: 0 for k in MALFORMED_KINDS}
    by_format = {"json": 0, "csv": 0, "parquet": 0}
    consent_false = missing_duration = 0
    for row in agg:
        by_kind[row["_kind"]] += row["n"]
        by_format[row["_fmt"]] += row["n"]
        if row["_defect"]:
            mal_by_kind[row["_defect"]] += row["n"]
        if row["_kind"] == "valid":
            consent_false += row["consent_false"] or 0
            missing_duration += row["no_duration"] or 0
    dups = {k: by_kind[k] for k in DUPLICATE_KINDS}
    counts = {
        "raw_records": sum(by_kind.values()),
        "valid_events": by_kind["valid"],
        "duplicates_injected": sum(dups.values()),
        "duplicates_by_kind": dups,
        "malformed_injected": by_kind["malformed"],
        "malformed_by_kind": mal_by_kind,
        "bronze_unparseable_records": mal_by_kind["broken_json"],
        "consent_false_events": consent_false,
        "missing_duration_events": missing_duration,
        "persons": customers,
        "shared_identifiers": shared,
        "records_by_format": by_format,
        "files_by_format": files,
        "events_requested": events,
        "seed": seed,
        "start_date": start_date.isoformat(),
        "end_date": end_date.isoformat(),
        "archetypes": list(ARCH_NAMES),
        "seconds": round(time.time() - t0, 1),
    }
    (gt / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    log.info("generated %d raw records (%d valid) in %.1fs", counts["raw_records"], counts["valid_events"],
             counts["seconds"])
    return counts
