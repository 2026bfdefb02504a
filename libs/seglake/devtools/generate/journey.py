"""One web/app session's journey: a walk of an archetype's Markov chain drawn with ``random``.

Plain Python helpers of the per-person simulation (:mod:`.simulation`): the chain step
(:func:`_pick`, over the chains of :data:`COMPILED_CHAINS`), product prices, the event rows
each journey state emits, and the checks the planted facts are re-drawn against. A journey
event is a list ``[etype, state, gap_s, product, qty, price_c, revenue_c, scroll, feature]``;
identifiers and time are attached when the sessions are placed. Every function draws from the
``random.Random`` it is given, in a fixed order, so a seed gives the same journey.
"""
from __future__ import annotations

import random
from bisect import bisect_right

from seglake.devtools.generate.model import (
    CATEGORIES, CHAINS, ET, FEATURES, LUXURY, PRODUCTS_PER_CATEGORY, ST,
)

#: a chain state's options as (cumulative probabilities, next states), see :func:`_compile`
_Options = tuple[tuple[float, ...], tuple[str, ...]]


def _compile(chain: dict[str, list[tuple[str, float]]]) -> dict[str, _Options]:
    """``chain`` with each state's options as (running sums of p, next states), for :func:`_pick`.

    The sums are added up in the options' order from 0.0, exactly as a walk over the options
    adding each p would, so :func:`_pick` picks the same state for the same draw.
    """
    out = {}
    for state, options in chain.items():
        acc, cum = 0.0, []
        for _, p in options:
            acc += p
            cum.append(acc)
        out[state] = (tuple(cum), tuple(name for name, _ in options))
    return out


#: :data:`.model.CHAINS` compiled for :func:`_pick` (what :func:`draw_journey` walks)
COMPILED_CHAINS: dict[str, dict[str, _Options]] = {arch: _compile(chain) for arch, chain in CHAINS.items()}


def _pick(rng: random.Random, options: _Options) -> str:
    """The next state: the first option whose running sum of p exceeds one uniform draw (the
    last option when rounding leaves the sums below the draw)."""
    cum, names = options
    i = bisect_right(cum, rng.random())
    return names[i] if i < len(names) else names[-1]


def _product_price_c(product: int) -> int:
    base = 500 + (product * 7919) % 19_500                 # 5.00 .. 199.99
    return base * 10 if product // PRODUCTS_PER_CATEGORY == LUXURY else base


def _product_in(r: random.Random, cat: int) -> int:
    """A random product of category ``cat`` (one draw)."""
    return cat * PRODUCTS_PER_CATEGORY + r.randrange(PRODUCTS_PER_CATEGORY)


def _side_event(r: random.Random, last_product: int) -> list | None:
    """The optional side event after a product view (wishlist, share, video, review)."""
    x = r.random()
    if x < 0.04:
        return [ET["wishlist_add"], -1, int(5 + r.random() * 30), last_product,
                -1, _product_price_c(last_product), -1, -1, -1]
    elif x < 0.06:
        return [ET["share"], -1, int(5 + r.random() * 30), last_product,
                -1, -1, -1, -1, -1]
    elif x < 0.09:
        return [ET["video_play"], -1, int(5 + r.random() * 60), last_product,
                -1, -1, -1, -1, -1]
    elif x < 0.10:
        return [ET["review"], -1, int(20 + r.random() * 200), last_product,
                -1, -1, -1, -1, -1]
    return None


def _product_view(r: random.Random, out: list[list], gap: int, fav_cat: int) -> int:
    """Append a product view (and maybe a side event); return the product viewed."""
    cat = fav_cat if r.random() < 0.7 else r.randrange(len(CATEGORIES))
    last_product = _product_in(r, cat)
    out.append([ET["product_view"], ST["product_view"], gap, last_product, -1,
                _product_price_c(last_product), -1, r.randrange(101), -1])
    side = _side_event(r, last_product)
    if side is not None:
        out.append(side)
    return last_product


def _add_to_cart(r: random.Random, out: list[list], gap: int, fav_cat: int, last_product: int,
                 cart: list[tuple[int, int]]) -> int:
    """Append an add-to-cart (and maybe a removal), record it in ``cart``; return the product."""
    if last_product < 0:
        last_product = _product_in(r, fav_cat)
    qty = 1 + (r.random() < 0.25) + (r.random() < 0.1)
    cart.append((last_product, qty))
    out.append([ET["add_to_cart"], ST["cart"], gap, last_product, qty,
                _product_price_c(last_product), -1, -1, -1])
    if r.random() < 0.08:
        out.append([ET["remove_from_cart"], -1, int(5 + r.random() * 60), last_product,
                    1, _product_price_c(last_product), -1, -1, -1])
    return last_product


def _checkout(gap: int, cart: list[tuple[int, int]], last_product: int) -> list:
    total = sum(_product_price_c(p) * q for p, q in cart) or _product_price_c(max(last_product, 0))
    return [ET["checkout_start"], ST["checkout"], gap, -1, -1, -1, total, -1, -1]


def _purchase(gap: int, cart: list[tuple[int, int]], last_product: int) -> list:
    if not cart:
        cart.append((max(last_product, 0), 1))
    total = sum(_product_price_c(p) * q for p, q in cart)
    prod, _ = cart[-1]
    return [ET["purchase"], ST["conversion"], gap, prod, sum(q for _, q in cart),
            _product_price_c(prod), total, -1, -1]


_APP_OPEN, _PAGE_VIEW, _SEARCH, _FEATURE_USE = ET["app_open"], ET["page_view"], ET["search"], ET["feature_use"]
_ST_BROWSE, _ST_SEARCH = ST["browse"], ST["search"]
_N_FEATURES = len(FEATURES)


def draw_journey(r: random.Random, chain: dict[str, _Options], fav_cat: int,
                 feature_p: float, app: bool, fast: bool) -> list[list]:
    """Walk ``chain`` (one of :data:`COMPILED_CHAINS`) from ``start`` until exit or conversion
    (at most ~80 events)."""
    out: list[list] = []
    append, draw = out.append, r.random
    state, last_product, cart = "start", -1, []
    while len(out) < 80:
        nxt = _pick(r, chain[state])
        if nxt == "exit":
            break
        gap = int(5 + draw() * 85) if fast else min(300, int(5 + r.expovariate(1 / 40)))
        if nxt == "browse":
            et = _APP_OPEN if (app and not out) else _PAGE_VIEW
            append([et, _ST_BROWSE, gap, -1, -1, -1, -1, r.randrange(101), -1])
        elif nxt == "search":
            append([_SEARCH, _ST_SEARCH, gap, -1, -1, -1, -1, -1, -1])
        elif nxt == "product_view":
            last_product = _product_view(r, out, gap, fav_cat)
        elif nxt == "cart":
            last_product = _add_to_cart(r, out, gap, fav_cat, last_product, cart)
        elif nxt == "checkout":
            append(_checkout(gap, cart, last_product))
        elif nxt == "conversion":
            append(_purchase(gap, cart, last_product))
            break
        if feature_p and app and draw() < feature_p:
            append([_FEATURE_USE, -1, int(5 + draw() * 60), -1, -1, -1, -1, -1, r.randrange(_N_FEATURES)])
        state = nxt
    return out


# -- checks of the planted facts ------------------------------------------------------------------
def _count(sessions: list[dict], etype: int) -> int:
    return sum(1 for s in sessions for e in s["events"] if e[0] == etype)


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
