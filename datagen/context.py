"""What a stage gets besides its records: backends (shared cache, budget), seed, progress, prompts.

One context type for every caller, built in one of two ways: `from_config` for a resolved
pipeline config (`datagen run`, `eval`, `study`: they all keep the run's budget, prices and
executor) and `from_args` for a stage command's flags. It sits below the stages and the CLI:
stages import it, nothing here imports a stage, the pipeline or the CLI.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from datagen.llm import CachedLLM, ResponseCache, make_llm, parse_spec
from datagen.llm.budget import Budget, Rate, make_budget, rates

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    llm_spec: str = "local"
    cache: ResponseCache | None = None
    seed: int = 0
    progress: bool = True
    prompts_dir: Path | None = None
    # Per-backend constructor options, e.g. {"openai": {"base_url": ..., "max_concurrency": 64}}.
    llm_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # `local` runs everything in this process; `ray` ships record-parallel LLM calls and
    # embeddings to a Ray cluster (datagen.llm.ray_pool, datagen.embed_ray) with `ray_config`.
    executor: str = "local"
    ray_config: Any = None
    # One spending cap for every paid backend of the run, each at its own price (spec -> rate).
    budget: Budget | None = None
    prices: dict[str, Rate] = field(default_factory=dict)
    _llms: dict[str, CachedLLM] = field(default_factory=dict, repr=False)
    _permit_gate: Any = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Any, cache: ResponseCache | None, progress: bool = True,
                    with_budget: bool = True) -> StageContext:
        """The context of a resolved `PipelineConfig` (duck-typed: this module sits below it)."""
        return cls(
            llm_spec=config.llm,
            cache=cache,
            budget=make_budget(config.budget_usd, cache, config.prices) if with_budget else None,
            prices=rates(config.prices),
            seed=config.seed,
            progress=progress,
            prompts_dir=Path(config.prompts_dir) if config.prompts_dir else None,
            llm_options={k: dict(v) for k, v in config.llm_options.items()},
            executor=config.executor,
            ray_config=config.ray,
        )

    @classmethod
    def from_args(cls, args: Any) -> StageContext:
        """The context of a stage command: `--llm`, `--base-url`, cache, seed, cost flags.
        Flags a command does not have are simply absent from `args`."""
        import os

        from datagen.paths import cache_root

        cache = None
        if hasattr(args, "cache") and not getattr(args, "no_cache", False):  # no --cache flag: a stage without LLM
            cache = ResponseCache(args.cache or (cache_root() / "llm_cache.sqlite"))
        openai_options: dict[str, Any] = {}
        if getattr(args, "max_concurrency", None):
            openai_options["max_concurrency"] = args.max_concurrency
        if getattr(args, "base_url", None):
            openai_options["base_url"] = args.base_url
        for flag in ("max_requests_per_minute", "max_tokens_per_minute", "batch"):
            if getattr(args, flag, None) is not None:
                openai_options[flag] = getattr(args, flag)
        spec = getattr(args, "llm", None) or os.environ.get("DATAGEN_LLM", "local")
        prices: dict[str, Rate] = {}
        if getattr(args, "price", None):
            try:
                price_in, price_out = (float(x) for x in args.price.split(","))
            except ValueError:
                raise ValueError(f"--price {args.price!r}: expected IN,OUT in USD per 1M tokens, e.g. 0.15,0.60") from None
            prices[spec] = Rate(price_in, price_out)
        budget = make_budget(args.budget, None, {}) if getattr(args, "budget", None) is not None else None
        return cls(
            llm_spec=spec,
            budget=budget,
            prices=prices,
            cache=cache,
            seed=getattr(args, "seed", 0),
            progress=not getattr(args, "no_progress", False),
            llm_options={"openai": openai_options},
        )

    def llm(self, spec: str | None = None) -> CachedLLM:
        """The backend for `spec` (default: the context's), built once and shared."""
        spec = spec or self.llm_spec
        if spec not in self._llms:
            backend, _ = parse_spec(spec)
            options = dict(self.llm_options.get(backend, {}))
            if backend == "openai":
                if self.budget is not None and spec not in self.prices:
                    raise ValueError(f"budget: no price for {spec}: add it under `prices:` (USD per 1M tokens)")
                options.update(budget=self.budget, price=self.prices.get(spec))
            if self.executor == "ray" and backend == "openai" and options.get("batch"):
                # The provider runs a batch: there is nothing to spread over actors, and its
                # ids live in the run directory. Sent from here, as the local executor does.
                log.warning("executor: ray: %s uses the Batch API, so its batches are sent from the driver", spec)
                self._llms[spec] = make_llm(spec, cache=self.cache, **options)
            elif self.executor == "ray":
                from datagen.llm.ray_pool import make_ray_backend

                self._llms[spec] = CachedLLM(make_ray_backend(spec, options, self.ray_config, self._gate()),
                                             self.cache)
            else:
                self._llms[spec] = make_llm(spec, cache=self.cache, **options)
        return self._llms[spec]

    def _gate(self) -> Any:
        """The run's one permit gate under `executor: ray` (budget, rates, cool-downs for every
        actor of every backend); its Ray actor starts with the first request that needs it."""
        if self._permit_gate is None:
            from datagen.llm.ray_gate import ClusterGate

            self._permit_gate = ClusterGate(self.budget)
        return self._permit_gate

    def embed_texts(self, texts: Any, **options: Any) -> Any:
        """`datagen.embed.embed_texts` here, or spread over the cluster's embedding actors."""
        if self.executor == "ray":
            from datagen.embed_ray import embed_texts_ray

            return embed_texts_ray(texts, self.ray_config, **options)
        from datagen.embed import embed_texts

        return embed_texts(texts, **options)

    def rng(self, salt: str) -> random.Random:
        """A generator per purpose, so adding randomness in one place never shifts another."""
        return random.Random(f"{self.seed}:{salt}")

    def bar(self, total: int | None, desc: str, unit: str = "it") -> tqdm:
        bar = _SpendBar(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True, leave=True)
        bar.ctx = self
        bar._calls_before = self.calls()
        return bar

    def spend_line(self, since: float, calls_before: int) -> str:
        """`12.3 req/s, 45,600 tok, $0.0123/$1.00` for the progress bar: what a paid run costs, live."""
        calls = sum(llm.usage.calls for llm in self._llms.values())
        tokens = sum(llm.usage.prompt_tokens + llm.usage.completion_tokens for llm in self._llms.values())
        rate = (calls - calls_before) / max(1e-9, time.monotonic() - since)
        line = f"{rate:.1f} req/s, {tokens:,} tok"
        if self.budget is not None:
            line += f", {self.budget.describe()}"
        return line

    def calls(self) -> int:
        return sum(llm.usage.calls for llm in self._llms.values())

    def usage(self) -> dict[str, dict[str, Any]]:
        return {spec: llm.usage.as_dict() for spec, llm in self._llms.items()}

    def _limiters(self) -> dict[str, Any]:
        """The concurrency limiters of this run's OpenAI-compatible backends (none under Ray)."""
        found = {}
        for spec, llm in self._llms.items():
            limiter = getattr(getattr(llm, "inner", llm), "limiter", None)
            if getattr(limiter, "history", None):
                found[spec] = limiter
        return found

    def concurrency_counters(self) -> dict[str, dict[str, int]]:
        """Each backend's cumulative limit cuts and timed-out attempts (a stage reports its delta)."""
        return {spec: {"cuts": lim.cuts, "queue_cuts": lim.queue_cuts, "timeouts": lim.timeouts}
                for spec, lim in self._limiters().items()}

    def concurrency_report(self, since: float, before: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
        """For the run report: each OpenAI-compatible backend's in-flight limit since `since`
        (time.monotonic()) as compact [seconds into the stage, limit] pairs (one pair when it
        is fixed), and the stage's cuts, queue cuts and timed-out attempts."""
        report = {}
        for spec, limiter in self._limiters().items():
            history = limiter.history
            start = [limit for t, limit in history if t <= since][-1:]
            points = [[0.0, round(start[0], 1)]] if start else []
            points += [[round(t - since, 1), round(limit, 1)] for t, limit in history if t > since]
            if points and points[-1][1] != round(limiter.limit, 1):  # the history keeps 1 point per 0.5 s
                points.append([round(limiter.clock() - since, 1), round(limiter.limit, 1)])
            old = before.get(spec, {})
            counts = {key: value - old.get(key, 0) for key, value in self.concurrency_counters()[spec].items()}
            report[spec] = {"limit": points, **counts}
        return report

    def close(self) -> None:
        for llm in self._llms.values():
            llm.close()
        self._llms.clear()
        if self._permit_gate is not None:
            self._permit_gate.close()
            self._permit_gate = None
        if self.executor == "ray":
            from datagen.ray_cluster import disconnect

            disconnect()


class _SpendBar(tqdm):
    """A stage's bar with requests/s, tokens and dollars vs the cap as its postfix
    (refreshed at most twice a second: it runs in the reply callback)."""

    ctx: StageContext | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._since = self._last = time.monotonic()
        self._calls_before = 0

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self.ctx is not None and not self.disable:
            now = time.monotonic()
            if now - self._last >= 0.5:
                self._last = now
                self.set_postfix_str(self.ctx.spend_line(self._since, self._calls_before), refresh=False)
        return shown
