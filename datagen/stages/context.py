"""What a stage gets besides its records: backends (shared cache, budget), seed, progress, prompts."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from datagen.llm import CachedLLM, ResponseCache, make_llm, parse_spec
from datagen.llm.budget import Budget, Rate


@dataclass
class StageContext:
    llm_spec: str = "local"
    cache: ResponseCache | None = None
    seed: int = 0
    progress: bool = True
    prompts_dir: Path | None = None
    # Per-backend constructor options, e.g. {"openai": {"base_url": ..., "max_concurrency": 64}}.
    llm_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One spending cap for every paid backend of the run, each at its own price (spec -> rate).
    budget: Budget | None = None
    prices: dict[str, Rate] = field(default_factory=dict)
    _llms: dict[str, CachedLLM] = field(default_factory=dict, repr=False)

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
            self._llms[spec] = make_llm(spec, cache=self.cache, **options)
        return self._llms[spec]

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

    def close(self) -> None:
        for llm in self._llms.values():
            llm.close()
        self._llms.clear()


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
