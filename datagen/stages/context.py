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
    # `local` runs everything in this process; `ray` ships record-parallel LLM calls and
    # embeddings to a Ray cluster (datagen.llm.ray_pool, datagen.embed_ray) with `ray_config`.
    executor: str = "local"
    ray_config: Any = None
    _llms: dict[str, CachedLLM] = field(default_factory=dict, repr=False)

    def llm(self, spec: str | None = None) -> CachedLLM:
        """The backend for `spec` (default: the context's), built once and shared."""
        spec = spec or self.llm_spec
        if spec not in self._llms:
            backend, _ = parse_spec(spec)
            options = self.llm_options.get(backend, {})
            if self.executor == "ray":
                from datagen.llm.ray_pool import make_ray_backend

                self._llms[spec] = CachedLLM(make_ray_backend(spec, options, self.ray_config), self.cache)
            else:
                self._llms[spec] = make_llm(spec, cache=self.cache, **options)
        return self._llms[spec]

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
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True, leave=True)

    def usage(self) -> dict[str, dict[str, Any]]:
        return {spec: llm.usage.as_dict() for spec, llm in self._llms.items()}

    def close(self) -> None:
        for llm in self._llms.values():
            llm.close()
        self._llms.clear()
        if self.executor == "ray":
            from datagen.ray_cluster import disconnect

            disconnect()
