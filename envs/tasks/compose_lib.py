"""The atomic function library of ``env=compose``: a small store / members / cities world with an
executable, stateful backend.

Every function is a plain typed method of :class:`Backend` with a Google-style docstring; the
tool schemas come from ``transformers.utils.get_json_schema`` through
:meth:`envs.base.Tool.from_function` (computed once per process, then re-bound to each episode's
fresh backend). Tool results are plain values (``"SKU-4821"``, ``42.5``) so a small model can copy
them into its next call. Bad arguments raise :class:`~envs.base.ToolError` (an error observation).

Names are chosen to be disjoint from the Berkeley Function Calling Leaderboard's functions
(``tests/envs/test_compose.py`` checks it against the installed ``bfcl-eval`` data), so training
on compose never trains on a BFCL function.

The world (:func:`make_world`) is plain JSON: products (name, SKU, price, stock), members (name,
id, city, points); rain chances and time zones are functions of the world seed and the city.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import random
from functools import cache, lru_cache
from typing import Any

from envs.base import Tool, ToolError

PRODUCTS = ("desk lamp", "blue kettle", "garden hose", "yoga mat", "wool scarf", "coffee grinder",
            "camping stove", "bike helmet", "rain jacket", "steel bottle", "phone stand",
            "travel mug", "drawing pad", "table fan", "night light", "door mat")
MEMBERS = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kira",
           "Luca")
CITIES = ("Lisbon", "Oslo", "Porto", "Quito", "Lagos", "Hanoi", "Perth", "Cusco", "Tunis", "Riga",
          "Accra", "Davao")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
RATES = {"EUR": 0.9, "GBP": 0.8, "JPY": 150.0, "CHF": 0.88}  # 1 USD in each currency
TIMEZONES = dict(zip(CITIES, ("UTC+0", "UTC+1", "UTC+0", "UTC-5", "UTC+1", "UTC+7", "UTC+8",
                              "UTC-5", "UTC+1", "UTC+2", "UTC+0", "UTC+8")))


def make_world(rng: random.Random, *, n_products: int = 6, n_members: int = 5) -> dict[str, Any]:
    """A random world (JSON-serialisable). SKUs and member ids are unique within it."""
    skus = rng.sample(range(1000, 10000), n_products)
    ids = rng.sample(range(100, 1000), n_members)
    products = {
        name: {"sku": f"SKU-{s}", "price": rng.randint(500, 12000) / 100,
               "stock": rng.randint(5, 40)}
        for name, s in zip(rng.sample(PRODUCTS, n_products), skus)
    }
    members = {
        name: {"id": f"M-{i}", "city": rng.choice(CITIES), "points": rng.randint(0, 50) * 10}
        for name, i in zip(rng.sample(MEMBERS, n_members), ids)
    }
    return {"seed": rng.randrange(2**31), "products": products, "members": members}


class Backend:
    """One episode's executable state. The tool methods below are the library; everything else
    is bookkeeping (:meth:`state` for state checks, :meth:`clone` for reference replays)."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.world = copy.deepcopy(world)
        self.seed = int(world["seed"])
        self.products: dict[str, dict[str, Any]] = self.world["products"]
        self.members: dict[str, dict[str, Any]] = self.world["members"]
        self.shipments: list[dict[str, Any]] = []

    # -- bookkeeping -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a state check compares: stock, points, and shipments (ids left out, so the
        order of two independent shipments in one turn does not matter)."""
        return {
            "stock": {p["sku"]: p["stock"] for p in self.products.values()},
            "points": {m["id"]: m["points"] for m in self.members.values()},
            "shipments": sorted((s["sku"], s["units"], s["member_id"], s["express"])
                                for s in self.shipments),
        }

    def clone(self) -> Backend:
        out = Backend(self.world)
        out.shipments = copy.deepcopy(self.shipments)
        return out

    def _product(self, sku: str) -> dict[str, Any]:
        for p in self.products.values():
            if p["sku"].casefold() == sku.strip().casefold():
                return p
        raise ToolError(f"no product with SKU {sku!r}")

    def _member(self, member_id: str) -> dict[str, Any]:
        for m in self.members.values():
            if m["id"].casefold() == member_id.strip().casefold():
                return m
        raise ToolError(f"no member with id {member_id!r}")

    @staticmethod
    def _city(city: str) -> str:
        for c in CITIES:
            if c.casefold() == city.strip().casefold():
                return c
        raise ToolError(f"unknown city {city!r}")

    # -- the library ---------------------------------------------------------------------------

    def lookup_sku(self, product: str) -> str:
        """Find the SKU code of a product in the store catalog by its name.

        Args:
            product: The product name, for example "desk lamp".
        """
        key = " ".join(product.casefold().split()).removeprefix("the ")
        if key not in self.products:
            raise ToolError(f"no product named {product!r} in the catalog")
        return str(self.products[key]["sku"])

    def sku_price(self, sku: str) -> float:
        """Unit price of a product in US dollars.

        Args:
            sku: The product's SKU code, for example "SKU-1234".
        """
        return float(self._product(sku)["price"])

    def sku_stock(self, sku: str) -> int:
        """Number of units of a product in stock.

        Args:
            sku: The product's SKU code.
        """
        return int(self._product(sku)["stock"])

    def restock_sku(self, sku: str, units: int) -> int:
        """Add units of a product to the stock; returns the new stock level.

        Args:
            sku: The product's SKU code.
            units: Units to add (1 to 100).
        """
        if not 1 <= units <= 100:
            raise ToolError(f"units must be between 1 and 100, got {units}")
        p = self._product(sku)
        p["stock"] += units
        return int(p["stock"])

    def create_shipment(self, sku: str, units: int, member_id: str, express: bool = False) -> str:
        """Ship units of a product from stock to a member; returns the shipment id.

        Args:
            sku: The product's SKU code.
            units: Units to ship (at least 1, at most the stock).
            member_id: The receiving member's id, for example "M-123".
            express: Use express delivery (default false).
        """
        p, m = self._product(sku), self._member(member_id)
        if not 1 <= units <= p["stock"]:
            raise ToolError(f"units must be between 1 and the stock ({p['stock']}), got {units}")
        p["stock"] -= units
        sid = f"SH-{len(self.shipments) + 1:03d}"
        self.shipments.append({"id": sid, "sku": p["sku"], "units": units, "member_id": m["id"],
                               "express": express})
        return sid

    def find_member(self, name: str) -> str:
        """Find the id of a loyalty-club member by first name.

        Args:
            name: The member's first name.
        """
        for n, m in self.members.items():
            if n.casefold() == name.strip().casefold():
                return str(m["id"])
        raise ToolError(f"no member named {name!r}")

    def member_city(self, member_id: str) -> str:
        """The city a member lives in.

        Args:
            member_id: The member's id, for example "M-123".
        """
        return str(self._member(member_id)["city"])

    def member_points(self, member_id: str) -> int:
        """A member's loyalty points balance.

        Args:
            member_id: The member's id.
        """
        return int(self._member(member_id)["points"])

    def add_points(self, member_id: str, points: int, reason: str = "bonus") -> int:
        """Add loyalty points to a member; returns the new balance.

        Args:
            member_id: The member's id.
            points: Points to add (1 to 1000).
            reason: Why the points are given (default "bonus").
        """
        if not 1 <= points <= 1000:
            raise ToolError(f"points must be between 1 and 1000, got {points}")
        m = self._member(member_id)
        m["points"] += points
        return int(m["points"])

    def rain_chance(self, city: str, day: str) -> int:
        """Chance of rain in a city on a day of the week, in percent.

        Args:
            city: The city name.
            day: A day of the week, for example "Friday".
        """
        c = self._city(city)
        d = next((x for x in DAYS if x.casefold() == day.strip().casefold()), None)
        if d is None:
            raise ToolError(f"day must be a day of the week, got {day!r}")
        h = hashlib.sha256(f"{self.seed}/{c}/{d}".encode()).digest()
        return int(h[0]) % 21 * 5  # 0, 5, ..., 100

    def city_timezone(self, city: str) -> str:
        """The time zone of a city as an offset from UTC.

        Args:
            city: The city name.
        """
        return TIMEZONES[self._city(city)]

    def exchange_amount(self, amount: float, currency: str) -> float:
        """Convert an amount of US dollars to another currency (EUR, GBP, JPY or CHF).

        Args:
            amount: The amount in US dollars.
            currency: The target currency code.
        """
        rate = RATES.get(currency.strip().upper())
        if rate is None:
            raise ToolError(f"currency must be one of {sorted(RATES)}, got {currency!r}")
        return round(amount * rate, 2)


FUNCTIONS: tuple[str, ...] = (
    "lookup_sku", "sku_price", "sku_stock", "restock_sku", "create_shipment", "find_member",
    "member_city", "member_points", "add_points", "rain_chance", "city_timezone",
    "exchange_amount",
)
MUTATING = frozenset({"restock_sku", "create_shipment", "add_points"})


@lru_cache(maxsize=1)
def _schemas() -> dict[str, Tool]:
    """Schemas computed once (get_json_schema parses docstrings); re-bound per episode."""
    b = Backend({"seed": 0, "products": {}, "members": {}})
    return {name: Tool.from_function(getattr(b, name)) for name in FUNCTIONS}


def tools_for(backend: Backend, names: list[str]) -> list[Tool]:
    """The named library functions as :class:`Tool` objects bound to ``backend``."""
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown compose functions {unknown}; library: {list(FUNCTIONS)}")
    cached = _schemas()
    return [Tool(n, cached[n].description, cached[n].parameters, getattr(backend, n))
            for n in names]


def schema(name: str) -> dict[str, Any]:
    return _schemas()[name].schema


@cache
def defaults(name: str) -> dict[str, Any]:
    """Optional parameters of a library function and their defaults (for call normalisation)."""
    sig = inspect.signature(getattr(Backend, name))
    return {k: p.default for k, p in sig.parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def with_defaults(call: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "arguments"}`` with omitted optional arguments filled in, so ``express=False``
    written out and left out compare equal."""
    name, args = call["name"], dict(call.get("arguments") or {})
    if name in FUNCTIONS:
        for k, v in defaults(name).items():
            args.setdefault(k, v)
    return {"name": name, "arguments": args}
