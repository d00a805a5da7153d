"""What a stage gets besides its records: backends (shared cache), seed, progress, prompts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from datagen.llm import CachedLLM, ResponseCache, make_llm, parse_spec


@dataclass
class StageContext:
    llm_spec: str = "local"
    cache: ResponseCache | None = None
    seed: int = 0
    progress: bool = True
    prompts_dir: Path | None = None
    # Per-backend constructor options, e.g. {"openai": {"base_url": ..., "max_concurrency": 64}}.
    llm_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    _llms: dict[str, CachedLLM] = field(default_factory=dict, repr=False)

    def llm(self, spec: str | None = None) -> CachedLLM:
        """The backend for `spec` (default: the context's), built once and shared."""
        spec = spec or self.llm_spec
        if spec not in self._llms:
            backend, _ = parse_spec(spec)
            self._llms[spec] = make_llm(spec, cache=self.cache, **self.llm_options.get(backend, {}))
        return self._llms[spec]

    def rng(self, salt: str) -> random.Random:
        """A generator per purpose, so adding randomness in one place never shifts another."""
        return random.Random(f"{self.seed}:{salt}")

    def bar(self, total: int | None, desc: str, unit: str = "it") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True, leave=True)

    def usage(self) -> dict[str, dict[str, Any]]:
        return {spec: llm.usage.as_dict() for spec, llm in self._llms.items()}

    def close(self) -> None:
        for llm in self._llms.values():
            llm.close()
        self._llms.clear()
