"""A spending cap that is never crossed: money is reserved before a request is sent.

Every paid attempt first reserves its worst case (prompt estimate + `max_tokens` x n at the
backend's price); the reply's real usage then replaces the reservation. A request whose
worst case does not fit next to what is spent and reserved is not sent: the budget stops,
the requests already in flight finish (and land in the cache: they are paid for), and the
caller gets `BudgetExceeded`, one line with spent, cap and what is left. A rerun with a
higher cap resumes from the cache, so nothing is paid twice.

One `Budget` per run, shared by every backend of that run (each reserves at its own price).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datagen.errors import DatagenError
from datagen.llm.ratelimit import estimate_prompt_tokens

# `datagen run` / stage commands exit with this when the cap stops them (EX_TEMPFAIL:
# nothing is broken; rerun with a higher --budget to continue from the cache).
EXIT_BUDGET = 75


@dataclass(frozen=True)
class Rate:
    """USD per 1M tokens; the Batch API charges `batch_share` of it."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0
    batch_share: float = 0.5

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        usd = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return usd * self.batch_share if batch else usd


class BudgetExceeded(DatagenError):
    """The cap stopped the run. Not a ValueError (bad input): the run is fine, just out of money."""

    exit_code = EXIT_BUDGET

    def __init__(self, spent: float, cap: float, reserved: float = 0.0):
        self.spent, self.cap = spent, cap
        super().__init__(
            f"budget: stopped at the cap: spent ${spent:.4f} of ${cap:.4f}, ${max(0.0, cap - spent):.4f} left "
            f"(the next request's worst case does not fit; rerun with a higher --budget to resume from the cache)"
        )
        self.reserved = reserved

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its figures, not its message: it crosses processes under `executor: ray`.
        return (type(self), (self.spent, self.cap, self.reserved))


@dataclass
class Reservation:
    usd: float
    batch: bool = False


class Budget:
    def __init__(self, cap_usd: float, already_spent: float = 0.0):
        if cap_usd < 0:
            raise ValueError(f"budget must be >= 0, not {cap_usd}")
        self.cap = float(cap_usd)
        self.spent = float(already_spent)
        self.reserved = 0.0
        self.stopped = False
        self._lock = threading.Lock()

    @property
    def left(self) -> float:
        return max(0.0, self.cap - self.spent)

    def reserve_usd(self, usd: float, batch: bool = False) -> Reservation:
        """Hold `usd` or raise `BudgetExceeded` (and refuse everything after, so a cheaper
        request cannot slip in behind one that did not fit: the stop is clean)."""
        with self._lock:
            if self.stopped or self.spent + self.reserved + usd > self.cap + 1e-12:
                self.stopped = True
                raise BudgetExceeded(self.spent, self.cap, self.reserved)
            self.reserved += usd
            return Reservation(usd, batch)

    def reserve(self, rate: Rate, messages: tuple[tuple[str, str], ...], max_tokens: int, n: int = 1,
                batch: bool = False) -> Reservation:
        worst = rate.cost(estimate_prompt_tokens(messages), max_tokens * n, batch)
        return self.reserve_usd(worst, batch)

    async def reserve_when_settled(self, rate: Rate, messages: tuple[tuple[str, str], ...], max_tokens: int,
                                   n: int = 1) -> Reservation:
        """Like `reserve`, but a request that does not fit only because others are in flight
        waits for them to settle (their real cost is usually below their worst case, which
        frees money); the budget stops when it still does not fit with nothing in flight."""
        return await self.reserve_usd_when_settled(rate.cost(estimate_prompt_tokens(messages), max_tokens * n))

    async def reserve_usd_when_settled(self, worst: float) -> Reservation:
        """`reserve_when_settled` for a worst case already priced (the Ray executor's permit
        actor gets the dollar figure from each worker, not the prompt)."""
        while True:
            with self._lock:
                if self.stopped:
                    raise BudgetExceeded(self.spent, self.cap, self.reserved)
                if self.spent + self.reserved + worst <= self.cap + 1e-12:
                    self.reserved += worst
                    return Reservation(worst)
                if self.reserved <= 1e-12:
                    self.stopped = True
                    raise BudgetExceeded(self.spent, self.cap, self.reserved)
            await asyncio.sleep(0.02)

    def settle(self, reservation: Reservation, rate: Rate | None, prompt_tokens: int = 0,
               completion_tokens: int = 0) -> float:
        """Replace the reservation by the real cost (0 for a failed attempt); returns it."""
        usd = rate.cost(prompt_tokens, completion_tokens, reservation.batch) if rate else 0.0
        with self._lock:
            self.reserved = max(0.0, self.reserved - reservation.usd)
            self.spent += usd
        return usd

    def forfeit(self, reservation: Reservation) -> None:
        """An attempt whose outcome will never be reported (its process died mid-request): it
        may have been billed, so its worst case counts as spent (the cap stays a cap)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - reservation.usd)
            self.spent += reservation.usd

    def absorb(self, usd: float, stopped: bool = False) -> None:
        """Spend made under another `Budget` on this run's behalf (the Ray executor's permit
        gate), so this one's report and progress line show it."""
        with self._lock:
            self.spent += usd
            self.stopped = self.stopped or stopped

    def describe(self) -> str:
        return f"${self.spent:.4f}/${self.cap:.2f}"

    def line(self) -> str:
        return f"budget: spent ${self.spent:.4f} of ${self.cap:.4f}, ${self.left:.4f} left"


def rates(prices: Mapping[str, Any]) -> dict[str, Rate]:
    """The config's `prices` table (pydantic `Price` models or dicts) as `Rate`s."""
    out = {}
    for spec, price in prices.items():
        data = price.model_dump() if hasattr(price, "model_dump") else dict(price)
        out[spec] = Rate(**data)
    return out


def spent_in_cache(cache: Any, prices: Mapping[str, Any]) -> float:
    """What the answers already in this cache cost: every row was paid for once. In a run
    directory the cache is the run's own, so this is the run's spending so far (after kill -9
    it misses at most the open commit window's rows, whose calls the resume pays and counts
    again). Rows are priced at the regular rate."""
    table = rates(prices)
    total = 0.0
    for backend, model, prompt_tokens, completion_tokens in cache.token_totals():
        rate = table.get(f"{backend}:{model}")
        if rate is not None:
            total += rate.cost(prompt_tokens, completion_tokens)
    return total


def make_budget(cap_usd: float | None, cache: Any, prices: Mapping[str, Any]) -> Budget | None:
    if cap_usd is None:
        return None
    return Budget(cap_usd, already_spent=spent_in_cache(cache, prices) if cache is not None else 0.0)
