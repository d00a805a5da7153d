"""One permit desk for a whole Ray cluster: the run's budget, rate limits and 429 cool-downs.

Under `executor: ray` every LLM actor runs its own OpenAI client, but the spending cap and the
provider's per-minute limits belong to the run (one account, one key), not to an actor. So
they live once, in `PermitGate`: a Ray actor on the driver's node holding the very `Budget`
and `RequestLimiter` objects a local run uses (one limiter per backend spec, one budget for
the run). Each worker's client is handed two stand-ins with the surfaces it already calls,
`budget.reserve_when_settled / settle` and `limiter.acquire / settle` (see
`OpenAICompatLLM._attempt`), so the client itself is unchanged:

- admission is ONE actor call per attempt (first tries and retries): the budget stand-in only
  prices the worst case and leaves it for the limiter stand-in of the same asyncio task,
  which asks the gate for budget and rate permit together;
- settling is fire-and-forget (the reply is already in hand; nothing waits on the gate),
  flushed before a batch counts as done so the driver's view of the spend is complete.

What stays per actor: concurrency and its adaptation (the actor's share of
`max_concurrency`, as before): congestion is felt per connection pool, and a shared
in-flight counter would cost a second round trip per attempt.

A worker that dies mid-request never settles its permits: after `lease` seconds (longer than
any attempt may take) the gate counts such a reservation's worst case as spent, so a lost
worker can neither push the run over its cap nor leave the budget waiting forever.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from dataclasses import dataclass
from typing import Any

from datagen.llm.budget import Budget, BudgetExceeded, Rate, Reservation
from datagen.llm.ratelimit import RequestLimiter, Ticket, estimate_prompt_tokens

# The gate's limiters bound rates and cool-downs only; concurrency is each actor's.
UNBOUNDED_CONCURRENCY = 1 << 30
LEASE_SWEEP_SECONDS = 1.0


@dataclass
class GateState:
    """What the driver mirrors into its own `Budget` (so the report shows the cluster's spend)."""

    spent: float
    reserved: float
    stopped: bool
    admitted: int


class PermitGate:
    """The Ray actor (async: waiting admissions do not block settlements)."""

    def __init__(self, cap_usd: float | None = None, already_spent: float = 0.0) -> None:
        self.budget = Budget(cap_usd, already_spent) if cap_usd is not None else None
        self.limiters: dict[str, RequestLimiter] = {}
        self.leases: dict[str, float] = {}
        self.tickets: dict[int, tuple[str, Ticket, float]] = {}
        self.reservations: dict[int, tuple[Reservation, float]] = {}
        self.admitted = 0
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task | None = None

    def add_backend(self, spec: str, requests_per_minute: float | None, tokens_per_minute: float | None,
                    period: float, lease: float) -> None:
        """Once per backend spec and run: its rates are the run's whole allowance, not a share."""
        if spec not in self.limiters:
            self.limiters[spec] = RequestLimiter(
                UNBOUNDED_CONCURRENCY, requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute, adaptive=False, period=period,
            )
            self.leases[spec] = lease

    async def admit(self, spec: str, usd: float | None, tokens: int, priority: int) -> tuple[int, float, bool]:
        """(permit, spent so far, stopped): waits for money (others' settlements) and for the
        spec's rate buckets and cool-down, in that order, as the local client does."""
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())
        reservation = None
        if usd is not None and self.budget is not None:
            try:
                reservation = await self.budget.reserve_usd_when_settled(usd)
            except BudgetExceeded:
                return 0, self.budget.spent, True
        try:
            ticket = await self.limiters[spec].acquire(tokens, priority=priority)
        except BaseException:
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, None)
            raise
        permit = next(self._ids)
        until = time.monotonic() + self.leases[spec]
        self.tickets[permit] = (spec, ticket, until)
        if reservation is not None:
            self.reservations[permit] = (reservation, until)
        self.admitted += 1
        return permit, self.budget.spent if self.budget else 0.0, False

    def release(self, permit: int, status: int | None = None, headers: dict[str, str] | None = None,
                tokens_used: int | None = None, retry_after: float | None = None) -> None:
        """The rate side of a finished attempt: refunds unused tokens, starts a 429 cool-down
        for the whole cluster, adopts the limits the server announces."""
        held = self.tickets.pop(permit, None)
        if held is None:
            return
        spec, ticket, _ = held
        self.limiters[spec].settle(ticket, status=status, headers=headers, tokens_used=tokens_used,
                                   retry_after=retry_after)

    def charge(self, permit: int, rate: Rate | None, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """The money side: the reservation is replaced by what the reply's usage costs."""
        held = self.reservations.pop(permit, None)
        if held is not None and self.budget is not None:
            self.budget.settle(held[0], rate, prompt_tokens, completion_tokens)

    def state(self) -> GateState:
        budget = self.budget
        return GateState(budget.spent if budget else 0.0, budget.reserved if budget else 0.0,
                         bool(budget and budget.stopped), self.admitted)

    def sweep(self, now: float | None = None) -> int:
        """Forfeit reservations whose lease ran out (their worker died); returns how many."""
        now = time.monotonic() if now is None else now
        expired = [p for p, (_, until) in self.reservations.items() if until <= now]
        for permit in expired:
            reservation, _ = self.reservations.pop(permit)
            if self.budget is not None:
                self.budget.forfeit(reservation)
        for permit in [p for p, (_, _, until) in self.tickets.items() if until <= now]:
            spec, ticket, _ = self.tickets.pop(permit)
            self.limiters[spec].settle(ticket)
        return len(expired)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SWEEP_SECONDS)
            self.sweep()


# --------------------------------------------------------------------------- worker side

# The worst case the budget stand-in priced for this asyncio task's attempt, picked up by the
# limiter stand-in's `acquire` right after (the client calls them in that order, same task).
_PRICED: contextvars.ContextVar[SharedReservation | None] = contextvars.ContextVar("datagen_priced", default=None)


@dataclass
class SharedReservation:
    """The client's reservation handle; `permit` is set once the gate granted it."""

    usd: float
    batch: bool = False
    permit: int | None = None


@dataclass
class SharedTicket:
    local: Ticket
    permit: int


class GatedBudget:
    """`Budget` as `OpenAICompatLLM` uses it, with the cap held by the gate."""

    def __init__(self, gate: Any, cap: float, spent: float = 0.0) -> None:
        self.gate = gate
        self.cap = cap
        self.spent = spent  # as of the gate's last answer (for the BudgetExceeded message)
        self.stopped = False
        self.pending: list[Any] = []

    async def reserve_when_settled(self, rate: Rate, messages: tuple[tuple[str, str], ...], max_tokens: int,
                                   n: int = 1) -> SharedReservation:
        held = SharedReservation(rate.cost(estimate_prompt_tokens(messages), max_tokens * n))
        _PRICED.set(held)
        return held

    def settle(self, reservation: SharedReservation, rate: Rate | None, prompt_tokens: int = 0,
               completion_tokens: int = 0) -> float:
        if reservation.permit is None:  # never granted: nothing held at the gate
            return 0.0
        self.pending.append(self.gate.charge.remote(reservation.permit, rate, prompt_tokens, completion_tokens))
        reservation.permit = None
        return rate.cost(prompt_tokens, completion_tokens) if rate else 0.0


class GatedLimiter:
    """`RequestLimiter` as `OpenAICompatLLM` uses it: this actor's own limiter for concurrency
    (adaptive), the gate for rates, cool-downs and (with the budget stand-in) money."""

    # Non-None: the client always estimates an attempt's tokens, since the gate may hold a
    # token limit (configured, or adopted from the server's headers) this actor cannot see.
    tokens = "held by the permit gate"

    def __init__(self, gate: Any, spec: str, local: RequestLimiter, budget: GatedBudget | None) -> None:
        self.gate = gate
        self.spec = spec
        self.local = local
        self.budget = budget
        self.pending: list[Any] = budget.pending if budget is not None else []

    async def acquire(self, tokens: int = 0, priority: int = 0, output_budget: int = 0) -> SharedTicket:
        priced, _ = _PRICED.get(), _PRICED.set(None)
        local = await self.local.acquire(0, priority=priority, output_budget=output_budget)
        usd = priced.usd if priced is not None and self.budget is not None else None
        answer = asyncio.wrap_future(self.gate.admit.remote(self.spec, usd, tokens, priority).future())
        try:
            permit, spent, stopped = await asyncio.shield(answer)
        except asyncio.CancelledError:
            # Cancelled (a fatal error elsewhere) while the gate admits: hand the permit back.
            answer.add_done_callback(self._give_back)
            self.local.settle(local)
            raise
        except BaseException:
            self.local.settle(local)
            raise
        if self.budget is not None:
            self.budget.spent = spent
        if stopped:
            self.local.settle(local)
            if self.budget is not None:
                self.budget.stopped = True
                raise BudgetExceeded(spent, self.budget.cap)
            raise BudgetExceeded(spent, 0.0)
        if priced is not None and usd is not None:
            priced.permit = permit
        return SharedTicket(local, permit)

    def settle(self, ticket: SharedTicket, *, latency: float | None = None, status: int | None = None,
               timed_out: bool = False, headers: Any = None, tokens_used: int | None = None,
               retry_after: float | None = None, output_tokens: int | None = None, sequences: int = 1) -> None:
        # This actor reacts at once (slot, adaptive limit, its own pause); the gate tells everyone else.
        self.local.settle(ticket.local, latency=latency, status=status, timed_out=timed_out,
                          tokens_used=tokens_used, retry_after=retry_after, output_tokens=output_tokens,
                          sequences=sequences)
        self.pending.append(self.gate.release.remote(ticket.permit, status, _limit_headers(headers),
                                                     tokens_used, retry_after))

    def observe_queue(self, waiting: float) -> None:
        """The server's queue length, for this actor's own concurrency (see RequestLimiter)."""
        self.local.observe_queue(waiting)

    def flush(self) -> None:
        """Wait until the gate has every settlement this actor sent (end of a batch)."""
        import ray

        pending, self.pending[:] = list(self.pending), []
        if pending:
            ray.get(pending)

    def _give_back(self, answer: asyncio.Future) -> None:
        if answer.cancelled() or answer.exception() is not None:
            return
        permit, _, stopped = answer.result()
        if not stopped:
            self.pending.append(self.gate.release.remote(permit))
            self.pending.append(self.gate.charge.remote(permit, None))


def _limit_headers(headers: Any) -> dict[str, str] | None:
    """Only what the limiter reads (x-ratelimit-*), as a plain lower-case dict for the wire."""
    if not headers:
        return None
    kept = {str(k).lower(): str(v) for k, v in headers.items() if str(k).lower().startswith("x-ratelimit-")}
    return kept or None


# --------------------------------------------------------------------------- driver side


class ClusterGate:
    """The driver's handle on the run's one `PermitGate`, started on first use. It mirrors the
    gate's spend into the driver's `Budget`, so progress bars, the manifest and the
    `BudgetExceeded` line show what the whole cluster spent."""

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget
        self.actor: Any = None
        self._mirrored = 0.0  # gate spend already added to the driver's budget
        self._specs: set[str] = set()

    def handle(self, ray: Any, spec: str, requests_per_minute: float | None, tokens_per_minute: float | None,
               period: float, lease: float) -> Any:
        if self.actor is None:
            cap = self.budget.cap if self.budget is not None else None
            spent = self.budget.spent if self.budget is not None else 0.0
            self._mirrored = spent
            self.actor = driver_local_actor(ray, PermitGate, cap, spent, max_concurrency=10_000)
        if spec not in self._specs:
            ray.get(self.actor.add_backend.remote(spec, requests_per_minute, tokens_per_minute, period, lease))
            self._specs.add(spec)
        return self.actor

    @property
    def cap(self) -> float | None:
        return self.budget.cap if self.budget is not None else None

    def sync(self, ray: Any) -> GateState | None:
        if self.actor is None:
            return None
        state: GateState = ray.get(self.actor.state.remote())
        if self.budget is not None:
            self.budget.absorb(state.spent - self._mirrored, state.stopped)
            self._mirrored = state.spent
        return state

    def close(self) -> None:
        if self.actor is not None:
            import ray

            if ray.is_initialized():
                ray.kill(self.actor)
            self.actor = None
            self._specs.clear()


def driver_local_actor(ray: Any, cls: type, *args: Any, **options: Any) -> Any:
    """An actor pinned to the driver's node: it must outlive any worker node that dies."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0, max_restarts=0)(cls).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False), **options
    ).remote(*args)
