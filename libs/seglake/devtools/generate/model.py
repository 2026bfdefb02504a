"""The generator's model, as constants only (a leaf module: it imports nothing of seglake).

Event types and their raw aliases, journey states, sources, channels, device kinds and
currencies with their raw spellings, categories and products, the planted defects and their
shares (in 1/10000 of records), the nine archetypes with their Markov chains, and the
column schema of the per-person simulation rows.
"""
from __future__ import annotations

#: bumped whenever the same seed and sizes give other data (written to counts.json; ``seglake demo``
#: reuses an input folder only of the same version). 2: churn planted as a decline (5 Dec 2026);
#: a counts.json without the key is version 1.
GENERATOR_VERSION = 2

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
# The planted A/B test (seglake run experiments; conf/experiments.yaml). The site tags every
# web/app event of the experiment window with the person's variant (exposure); variant B shows a
# personalized in-store coupon. Effect: a B person of an EFFECT_ARCHETYPE who is exposed and
# makes no order in the window redeems it with probability EFFECT_PROB (one store purchase in
# the window's first EFFECT_DAYS days). Both potential outcomes of every person are in the
# ground truth (persons.parquet: exp_converted_a/_b, exp_extra_revenue), so the true effect on
# any population is known. Order-free archetypes (browsers, abandoners) are untouched: their
# zero-purchase facts hold; churners are left out (most decline or have left by then). Nothing happens after
# EFFECT_DAYS, so activity in the window's later days (retention) has no effect.
EXPERIMENT_DAYS = 28                 # window [end_date - 1 - 28 days, end_date - 1) (exclusive end)
EXPERIMENT_END_GAP_DAYS = 2          # the window ends this many days before end_date + 1
EFFECT_ARCHETYPES = ("power_user", "repeat_buyer", "vip", "email_responder")
EFFECT_PROB = 0.9
EFFECT_DAYS = 14
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
    "churner": {"share": 0.12, "activity": 1.0, "app": 0.3},
    "new_user": {"share": 0.08, "activity": 0.3, "app": 0.3},
    "email_responder": {"share": 0.14, "activity": 1.0, "app": 0.1},
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCHETYPES)
_ACTIVITY_NORM = sum(a["share"] * a["activity"] for a in ARCHETYPES.values())
_MUST_LOG_IN = {"power_user", "repeat_buyer", "vip", "email_responder"}

# Planted churn (a churner's own random stream, ``seglake:<seed>:<pid>:churn``). A churner is an
# ordinary customer until the onset of a decline; from then on its sessions thin out (their density
# falls linearly to CHURN_FLOOR of what it was at the churn instant), its searches fail (return no
# results) with probability CHURN_FAILED_SEARCH_P instead of FAILED_SEARCH_P, and it contacts
# support (a CRM call_center event) CHURN_SUPPORT_CONTACTS times; it has no event after the churn
# instant. The onset comes CHURN_DECLINE_DAYS before the churn, which falls at a uniform share
# CHURN_AT of the span from the person's first activity to the data's end: shares above 1 churn
# after the data ends (still active, some already declining). The churn date and the onset are in
# persons.parquet (churn_date, decline_start). Nobody else churns on purpose; a sparse customer
# may still be quiet for 30 days by chance, as in real data.
CHURN_AT = (0.3, 1.3)
CHURN_DECLINE_DAYS = (21, 49)
CHURN_FLOOR = 0.15
FAILED_SEARCH_P = 0.04
CHURN_FAILED_SEARCH_P = 0.5
CHURN_SUPPORT_CONTACTS = (1, 3)
SEARCH_RESULTS_MEAN = 30             # a successful search's result count: 1 + exponential(mean)

_SIM_SCHEMA = (
    "pid LONG, seq INT, ts_ms LONG, etype INT, state INT, src INT, sess INT, chan INT, "
    "uid BOOLEAN, anon INT, dev INT, dev_kind INT, email INT, phone BOOLEAN, product INT, "
    "qty INT, price_c LONG, revenue_c LONG, dur_ms LONG, scroll INT, feature INT, variant INT, "
    "arch INT, consent BOOLEAN, currency INT, has_uid BOOLEAN, exp_flags INT, exp_extra_c LONG, "
    "results INT, churn_ms LONG, decline_ms LONG"
)
_SIM_COLS = [part.split()[0] for part in _SIM_SCHEMA.split(", ")]

DAY_MS = 86_400_000
MIN_SESSION_GAP_MS = 50 * 60_000     # > 45 min between sessions even after side events
