"""Per-person simulation (plain Python, runs inside ``mapInPandas``).

:class:`_Person` draws, from ``random.Random`` seeded per (seed, person), an archetype,
identifiers and a list of sessions whose journeys follow the archetype's Markov chain
(:mod:`.journey`); journeys are re-drawn until the archetype's planted fact holds, then the
sessions are placed on a timeline and every event gets its identifiers. The result is rows
of numbers only (``_SIM_SCHEMA``); :func:`.batches._simulate_batches` is the ``mapInPandas``
function, which builds each frame column by column from a 2-D integer array of the rows
(``DataFrame.from_records`` over Python tuples cost more than the simulation itself). The
order of random draws is part of the output: the same seed gives the same rows, so the code
is tuned (constants hoisted out of the per-event loops, cumulative chain probabilities) only
in ways that draw the same numbers in the same order.
"""
from __future__ import annotations

import random
from itertools import accumulate

from seglake.devtools.generate.journey import (
    COMPILED_CHAINS, _count, _high_intent, _product_in, _product_price_c, draw_journey,
)
from seglake.devtools.generate.model import (
    _ACTIVITY_NORM, _MUST_LOG_IN, _SIM_COLS, ARCH_NAMES, ARCHETYPES, CATEGORIES, CH,
    CHURN_AT, CHURN_DECLINE_DAYS, CHURN_FAILED_SEARCH_P, CHURN_FLOOR, CHURN_SUPPORT_CONTACTS, DAY_MS,
    EFFECT_ARCHETYPES, EFFECT_DAYS, EFFECT_PROB, ET, FAILED_SEARCH_P, FEATURES, KIOSK_BASE, LUXURY,
    MIN_SESSION_GAP_MS, SEARCH_RESULTS_MEAN, SRC,
)

_DURATION_TYPES = frozenset((ET["page_view"], ET["product_view"], ET["search"], ET["app_open"],
                             ET["video_play"], ET["feature_use"]))
_EMAIL_EVENTS = frozenset((ET["email_open"], ET["email_click"]))
_SEARCH = ET["search"]
_SRC_WEB, _SRC_APP, _SRC_EMAIL = SRC["web"], SRC["app"], SRC["email"]
_ARCH_INDEX = range(len(ARCH_NAMES))
#: the archetype shares summed up once: ``choices(cum_weights=_ARCH_CUM)`` draws exactly as
#: ``choices(weights=shares)``, which computes this same ``accumulate`` on every call
_ARCH_CUM = list(accumulate(ARCHETYPES[a]["share"] for a in ARCH_NAMES))


def _active_window(r: random.Random, arch_name: str, start_ms: int, end_ms: int) -> tuple[int, int]:
    """The span in which a person of ``arch_name`` is active (one draw unless fixed)."""
    span = end_ms - start_ms
    if arch_name == "new_user":
        return end_ms - 7 * DAY_MS + 3_600_000, end_ms
    else:
        return start_ms + int(r.random() * 0.25 * span), end_ms


def _decline_warp(x: int, free: int, onset: float, length: float) -> int:
    """A uniform offset ``x`` in [0, free] moved so that offsets thin out after ``onset``.

    The density is 1 before ``onset`` and falls linearly by (1 - CHURN_FLOOR) over ``length``
    after it (all in the free-time coordinates of :meth:`_Person._place`); ``x`` is mapped through
    the inverse of the density's cumulative share, so the order of the offsets is kept.
    """
    if free <= 0 or onset >= free:
        return x
    a = (1.0 - CHURN_FLOOR) / (2.0 * length)

    def cum(v: float) -> float:
        return v if v <= onset else v - a * (v - onset) ** 2

    u = x / free * cum(free)
    if u <= onset:
        return int(u)
    d = (1.0 - (max(0.0, 1.0 - 4.0 * a * (u - onset))) ** 0.5) / (2.0 * a)
    return min(free, int(onset + d))


def _regular_channel(x: float) -> int:
    """The acquisition channel of a regular session from a uniform draw ``x``."""
    return (CH["direct"] if x < 0.35 else CH["organic_search"] if x < 0.65 else
            CH["paid_search"] if x < 0.8 else CH["social"] if x < 0.92 else CH["referral"])


def _fixed_events(r: random.Random, kind: str, events: list[list], fav_cat: int) -> list[list]:
    """A session's events with the side events of its kind (email, CRM contact, store)."""
    if kind == "email":
        return ([[ET["email_open"], -1, 0, -1, -1, -1, -1, -1, -1],
                 [ET["email_click"], -1, int(5 + r.random() * 240), -1, -1, -1, -1, -1, -1]]
                + events)
    elif kind == "email_open":
        return [[ET["email_open"], -1, 0, -1, -1, -1, -1, -1, -1]]
    elif kind == "call_center":
        return [[ET["call_center"], -1, 0, -1, -1, -1, -1, -1, -1]]
    elif kind == "store":
        prod = _product_in(r, fav_cat)
        price = _product_price_c(prod)
        return [[ET["store_purchase"], -1, 0, prod, 1, price, price, -1, -1]]
    return events


def _source(kind: str, app: bool) -> int:
    return (SRC["app"] if app else SRC["web"]) if kind in ("regular", "email") else (
        SRC["email"] if kind == "email_open" else SRC["crm"] if kind == "call_center" else SRC["offline"])


class _Person:
    """Simulates one person's sessions; ``events`` is a list of column tuples."""

    def __init__(self, pid: int, seed: int, start_ms: int, end_ms: int, mean_events: float,
                 kiosks: int, kiosk_share: float, experiment: tuple[int, int, float] | None = None):
        self.pid = pid
        self.seed = seed
        # (window start ms, window end ms exclusive, share of variant B): see model.EXPERIMENT
        self.exp_start, self.exp_end, b_share = experiment or (0, 0, 0.5)
        r = self.rng = random.Random(f"seglake:{seed}:{pid}")
        self.arch = r.choices(_ARCH_INDEX, cum_weights=_ARCH_CUM)[0]
        self.arch_name = ARCH_NAMES[self.arch]
        self.chain = COMPILED_CHAINS[self.arch_name]
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
        self.variant = 0 if r.random() < 1.0 - b_share else 1
        self.fav_cat = LUXURY if self.arch_name == "vip" else r.randrange(len(CATEGORIES) - 1)
        self.kiosk = (KIOSK_BASE + r.randrange(kiosks)) if (
            kiosks and self.has_uid and r.random() < kiosk_share) else -1
        self.a_start, self.a_end = _active_window(r, self.arch_name, start_ms, end_ms)
        # planted churn (model.CHURN_AT): its own random stream, so nothing else moves with it
        self.crng = random.Random(f"seglake:{seed}:{pid}:churn")
        self.churn_ms = self.decline_ms = -1
        if self.arch_name == "churner":
            cr, (lo, hi), (dlo, dhi) = self.crng, CHURN_AT, CHURN_DECLINE_DAYS
            self.churn_ms = self.a_start + int((lo + (hi - lo) * cr.random()) * (end_ms - self.a_start))
            self.decline_ms = max(self.a_start, self.churn_ms - int((dlo + (dhi - dlo) * cr.random()) * DAY_MS))
            self.a_end = min(self.a_end, self.churn_ms)
        noise = r.lognormvariate(0.0, 0.35) / 1.0632       # mean 1
        self.target = max(3.0, mean_events * a["activity"] / _ACTIVITY_NORM * noise)

    # -- one session's content: list of [etype, state, gap_s, product, qty, price_c, revenue_c,
    #    scroll, feature]; identifiers are attached at placement -------------------------------
    def _journey(self, app: bool, fast: bool) -> list[list]:
        feature_p = 0.35 if self.arch_name == "power_user" else (0.05 if app else 0.0)
        return draw_journey(self.rng, self.chain, self.fav_cat, feature_p, app, fast)

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
                s["chan"] = _regular_channel(r.random())
            s["events"] = self._journey(app, self.arch_name == "high_intent_abandoner")
        return s

    def _session_kinds(self) -> str:
        x = self.rng.random()
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

    def _draw_sessions(self) -> list[dict]:
        """Sessions until the target event count or the active span's capacity is reached."""
        span_capacity = max(1, (self.a_end - self.a_start) // (2 * 3_600_000))
        sessions: list[dict] = []
        total = 0
        while total < self.target and len(sessions) < span_capacity:
            s = self._new_session(self._session_kinds() if sessions else "regular")
            sessions.append(s)
            total += max(1, len(s["events"]))
        return sessions

    def _plant_facts(self, sessions: list[dict]) -> None:
        """Make the archetype's planted fact hold (in place; may append sessions)."""
        r = self.rng
        name = self.arch_name
        purchase = ET["purchase"]
        if name == "cart_abandoner":
            self._ensure(sessions, lambda ss: _count(ss, ET["add_to_cart"]) >= 1,
                         lambda ev: any(e[0] == ET["add_to_cart"] for e in ev))
        elif name == "high_intent_abandoner":
            self._ensure(sessions, lambda ss: any(_high_intent(s["events"]) for s in ss),
                         _high_intent)
        elif name in ("repeat_buyer", "vip"):
            need = 3 if name == "repeat_buyer" else 5
            while len([s for s in sessions if s["kind"] == "regular"]) < need:
                sessions.append(self._new_session("regular"))
            self._ensure(sessions, lambda ss: _count(ss, purchase) >= need,
                         lambda ev: bool(ev) and ev[-1][0] == purchase, limit=2000)
        elif name == "email_responder":
            if not any(s["kind"] == "email" for s in sessions):
                sessions.append(self._new_session("email"))
            mails = [s for s in sessions if s["kind"] == "email"]
            self._ensure(mails, lambda ss: _count(ss, purchase) >= 1,
                         lambda ev: bool(ev) and ev[-1][0] == purchase)
        if name == "power_user":
            used = {e[8] for s in sessions for e in s["events"] if e[0] == ET["feature_use"]}
            missing = [f for f in range(len(FEATURES)) if f not in used][: max(0, 3 - len(used))]
            regular = [s for s in sessions if s["kind"] == "regular"]
            for k, f in enumerate(missing):
                regular[-1 - (k % len(regular))]["events"].append(
                    [ET["feature_use"], -1, int(5 + r.random() * 60), -1, -1, -1, -1, -1, f])

    def _add_crm_contacts(self, sessions: list[dict]) -> None:
        """Identifiers that would otherwise never be linked get a CRM contact (in place)."""
        emails_used = {0} if any(s["kind"] in ("email", "email_open") for s in sessions) else set()
        for k in range(self.n_email):
            if k not in emails_used:
                sessions.append({"kind": "call_center", "events": [], "email": k})
        if self.has_phone:
            sessions.append({"kind": "call_center", "events": [], "phone": True})
        if self.kiosk >= 0:
            sessions.append({"kind": "store", "events": [], "kiosk": True})

    def simulate(self) -> list[tuple]:
        """The person's event rows, each a tuple in ``_SIM_COLS`` order."""
        rows, results, exp_flags, exp_extra_c = self.simulate_parts()
        return [row + (exp_flags, exp_extra_c, res, self.churn_ms, self.decline_ms)
                for row, res in zip(rows, results)]

    def simulate_parts(self) -> tuple[list[tuple], list[int], int, int]:
        """The rows of :meth:`simulate` in parts: ``(rows, results, exp_flags, exp_extra_c)``, the
        rows up to ``has_uid`` (the first 26 of ``_SIM_COLS``), each row's search result count,
        and the person's two experiment columns (the same on every row, as ``churn_ms`` and
        ``decline_ms``). :func:`_simulate_batches` builds its frames from these."""
        sessions = self._draw_sessions()
        self._plant_facts(sessions)
        self._add_crm_contacts(sessions)
        sessions = [s for s in sessions if s["events"] or s["kind"] not in ("regular", "email")]
        rows = self._plant_support_contacts(self._place(sessions))
        exp_flags, exp_extra_c = self._plant_experiment(rows)      # may append a row
        return rows, self._search_results(rows), exp_flags, exp_extra_c

    def _identified_row(self, seq: int, at: int, etype: int, src: int, sess: int, email: int, product: int = -1,
                        qty: int = -1, price_c: int = -1, revenue_c: int = -1) -> tuple:
        """A one-event session outside the web and app (a store purchase, a support contact) the
        person is identified in: user id, the email ``email`` (-1: the phone when there is one)."""
        return (self.pid, seq, at, etype, -1, src, sess, -1, self.has_uid, -1, -1, -1, email,
                email < 0 and self.has_phone, product, qty, price_c, revenue_c, -1, -1, -1, -1,
                self.arch, self.consent, self.currency, self.has_uid)

    # -- planted churn (model.CHURN_AT): support contacts in the decline, failed searches -------
    def _plant_support_contacts(self, rows: list[tuple]) -> list[tuple]:
        """A declining churner with a user id contacts support (call_center) 1-3 times in its decline."""
        if self.decline_ms < 0 or not self.has_uid:
            return rows
        cr = self.crng
        times = [row[2] for row in rows]
        sess = max((row[6] for row in rows), default=-1)
        for _ in range(cr.randint(*CHURN_SUPPORT_CONTACTS)):
            at = self._free_instant(cr, times, self.decline_ms, self.a_end)
            if at is None:
                break
            times.append(at)
            sess += 1
            em = cr.randrange(self.n_email) if self.n_email else -1
            rows.append(self._identified_row(len(rows), at, ET["call_center"], SRC["crm"], sess, em))
        return rows

    def _search_results(self, rows: list[tuple]) -> list[int]:
        """Each row's ``results``: a search's result count (0 = failed; more often in a churner's
        decline), -1 for other events."""
        cr, onset = self.crng, self.decline_ms
        out = [-1] * len(rows)
        for i, row in enumerate(rows):
            if row[3] == _SEARCH:
                p = CHURN_FAILED_SEARCH_P if 0 <= onset <= row[2] else FAILED_SEARCH_P
                out[i] = 0 if cr.random() < p else 1 + int(cr.expovariate(1.0 / SEARCH_RESULTS_MEAN))
        return out

    # -- the planted A/B test (model.EXPERIMENT): own random stream, so nothing else changes ----
    def _plant_experiment(self, rows: list[tuple]) -> tuple[int, int]:
        """Both potential outcomes of the person; variant B's coupon purchase appended when drawn.

        Returns the person's ``exp_flags`` (-1: not exposed; else bit 0 = orders in the window
        under A, bit 1 = under B) and ``exp_extra_c`` (revenue in cents of the coupon purchase the
        person would make under B; 0: none), which every row of the person gets.
        """
        er = random.Random(f"seglake:{self.seed}:{self.pid}:experiment")
        u = er.random()
        lo, hi = self.exp_start, self.exp_end
        ts, et_i, var_i = 2, 3, _SIM_COLS.index("variant")
        window = [row for row in rows if lo <= row[ts] < hi]
        exposed = any(row[var_i] >= 0 for row in window)
        orders = (ET["purchase"], ET["store_purchase"])
        natural = any(row[et_i] in orders for row in window)
        extra_c, at = 0, None
        if exposed and not natural and self.arch_name in EFFECT_ARCHETYPES and u < EFFECT_PROB:
            at = self._free_instant(er, [row[ts] for row in rows], max(lo, self.a_start),
                                    min(hi, lo + EFFECT_DAYS * DAY_MS, self.a_end))
        if at is not None:
            prod = _product_in(er, self.fav_cat)
            extra_c = _product_price_c(prod)
            em = er.randrange(self.n_email) if self.n_email else -1
            if self.variant == 1:
                sess = max(row[6] for row in rows) + 1 if rows else 0
                rows.append(self._identified_row(len(rows), at, ET["store_purchase"], SRC["offline"], sess, em,
                                                 prod, 1, extra_c, extra_c))
        flags = -1 if not exposed else (int(natural) | (int(natural or extra_c > 0) << 1))
        return flags, extra_c

    @staticmethod
    def _free_instant(r: random.Random, times: list[int], lo: int, hi: int) -> int | None:
        """A whole second in [lo, hi) at least a session gap away from every one of ``times``."""
        margin = MIN_SESSION_GAP_MS + 1000
        marks = sorted(t for t in times if lo - margin < t < hi + margin)
        edges = [lo - margin] + marks + [hi + margin]
        gaps = [(max(a + margin, lo), min(b - margin, hi - 1)) for a, b in zip(edges, edges[1:])]
        gaps = [(a, b) for a, b in gaps if b - a >= 2000]
        if not gaps:
            return None
        a, b = gaps[r.randrange(len(gaps))]
        return (a + 1000 + r.randrange(b - a - 1000)) // 1000 * 1000

    # -- timeline and identifiers ---------------------------------------------------------------
    def _place(self, sessions: list[dict]) -> list[tuple]:
        r = self.rng
        # side-event-only sessions stay where they were drawn; CRM fix-ups go to random places
        durations = []
        for s in sessions:
            s["events"] = _fixed_events(r, s["kind"], s["events"], self.fav_cat)
            durations.append(sum(e[2] for e in s["events"][1:]) * 1000)
        n = len(sessions)
        free = (self.a_end - self.a_start) - sum(durations) - n * (MIN_SESSION_GAP_MS + 1000)
        free = max(0, free)
        offsets = sorted(r.randrange(free + 1) for _ in range(n))
        if self.decline_ms >= 0:   # a churner's sessions thin out from the onset of its decline
            scale = free / max(1, self.a_end - self.a_start)
            offsets = [_decline_warp(o, free, (self.decline_ms - self.a_start) * scale,
                                     max(1.0, (self.churn_ms - self.decline_ms) * scale)) for o in offsets]
        rows: list[tuple] = []
        seen_dev: set[int] = set()
        seen_cookie: set[int] = set()
        cookies_of = {d: [c for c in range(self.n_cookie) if c % self.n_dev == d] or [d % self.n_cookie]
                      for d in range(self.n_dev)}
        cursor = self.a_start
        before = 0                                     # sum of the durations of the sessions before
        for sess_no, (s, off, dur) in enumerate(zip(sessions, offsets, durations)):
            start = self.a_start + off + sess_no * (MIN_SESSION_GAP_MS + 1000) + before
            start = max(start, cursor) // 1000 * 1000
            before += dur
            cookie, login_at = self._login(s, cookies_of, seen_dev, seen_cookie)
            t = self._emit(rows, s, sess_no, start, cookie, login_at)
            cursor = t + 1000 + MIN_SESSION_GAP_MS
        return rows

    def _login(self, s: dict, cookies_of: dict[int, list[int]], seen_dev: set[int],
               seen_cookie: set[int]) -> tuple[int, int]:
        """A web/app session's cookie and the index of its login event (-1: none)."""
        r = self.rng
        kind, events = s["kind"], s["events"]
        dev = s.get("dev", -1)
        app = s.get("app", False)
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
        return cookie, login_at

    def _emit(self, rows: list[tuple], s: dict, sess_no: int, start: int, cookie: int,
              login_at: int) -> int:
        """Append one session's event rows (``seq`` continues from ``len(rows)``); return the
        time of its last event.

        Per event, in this order: the millisecond part of its time, its identifiers
        (:meth:`_web_identifiers` or :meth:`_identifiers`) and its duration. What is the same
        for every event of the session is looked up once, before the loop (this is the
        generator's innermost loop).
        """
        r = self.rng
        draw, randrange = r.random, r.randrange
        kind, events = s["kind"], s["events"]
        dev = s.get("dev", -1)
        app = s.get("app", False)
        web = kind in ("regular", "email")
        chan = s.get("chan", CH["email"] if kind in ("email", "email_open") else -1)
        src = _source(kind, app)
        # the site's A/B tool tags every web/app event of the window with the variant
        tagged = src in (_SRC_WEB, _SRC_APP)
        exp_start, exp_end, variant = self.exp_start, self.exp_end, self.variant
        pid, has_uid, arch, consent, currency = self.pid, self.has_uid, self.arch, self.consent, self.currency
        dev_kind = self.dev_kinds[dev] if dev >= 0 else -1
        web_from = 2 if kind == "email" else 0         # an email session's web events follow open + click
        last = len(events) - 1
        append = rows.append
        t = start
        for k, e in enumerate(events):
            et, state, gap, prod, qty, price_c, revenue_c, scroll, feature = e
            t += gap * 1000
            ms = randrange(1, 1000) if draw() < 0.3 else 0
            is_email_evt = et in _EMAIL_EVENTS
            if is_email_evt:
                uid, anon, dv, em, ph = True, -1, -1, 0, False
            elif web:
                uid, anon, dv = self._web_identifiers(k - web_from, dev, app, cookie, login_at)
                em, ph = -1, False
            else:
                uid, anon, dv, em, ph = self._identifiers(s)
            if et in _DURATION_TYPES:          # a share of the gap to the next event (-1: untimed type)
                nxt_gap = events[k + 1][2] if k < last else 0
                dur = (int(nxt_gap * 1000 * (0.3 + 0.6 * draw())) if nxt_gap
                       else int(2000 + draw() * 60_000))
            else:
                dur = -1
            append((
                pid, len(rows), t + ms, et, state, _SRC_EMAIL if is_email_evt else src, sess_no,
                chan if (web or is_email_evt) else -1,
                uid and has_uid, anon, dv, -1 if is_email_evt else dev_kind,
                em, ph, prod, qty, price_c, revenue_c, dur, scroll, feature,
                variant if (tagged and not is_email_evt and exp_start <= t + ms < exp_end) else -1,
                arch, consent, currency, has_uid,
            ))
        return t

    def _web_identifiers(self, k: int, dev: int, app: bool, cookie: int,
                         login_at: int) -> tuple[bool, int, int]:
        """(uid, anon, dev) on the ``k``-th web/app event of a session: the user id from its login
        event on; the app's device, or the web cookie with the device on linking events (the
        first and the login) and on 70 % of the others."""
        logged = login_at >= 0 and k >= login_at
        if app:
            return logged, -1, dev
        linking = k == 0 or (logged and k == login_at)
        return logged, cookie, (dev if (linking or self.rng.random() < 0.7) else -1)

    def _identifiers(self, s: dict) -> tuple[bool, int, int, int, bool]:
        """(uid, anon, dev, email, phone) on the event of a CRM contact or a store purchase
        (email events: :meth:`_emit`; web and app events: :meth:`_web_identifiers`)."""
        r = self.rng
        anon = dv = em = -1
        ph = False
        if s["kind"] == "call_center":
            if s.get("phone"):
                ph = True
            elif "email" in s:
                em = s["email"]
            elif self.has_phone and r.random() < 0.6:  # noqa: SIM114
                ph = True
            elif self.n_email:
                em = r.randrange(self.n_email)
        else:                                          # store
            em = r.randrange(self.n_email) if self.n_email else -1
            dv = self.kiosk if s.get("kiosk") else -1
            ph = dv < 0 and em < 0 and self.has_phone
        return True, anon, dv, em, ph
