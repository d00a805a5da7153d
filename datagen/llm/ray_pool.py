"""The `ray` executor's LLM backends: the same backends, their requests spread over a cluster.

Stages never see Ray. `StageContext.llm()` wraps a backend in one of these and then in the
usual `CachedLLM`, so the cache key, the cache file and resume are exactly the local ones:

- `openai:` / `local:` -> `RayPoolLLM`: a Ray Data `map_batches` actor pool where each actor
  runs our own backend (for `openai:` the aiohttp client with its retries and `Retry-After`
  handling). Each completion goes, the moment it lands on the actor, to a small sink actor on
  the driver's node; the driver drains the sink and hands every completion to `CachedLLM`,
  which commits it to the run's SQLite cache. A batch that Ray retries after a worker died
  first asks the sink what is already done and skips it: a finished call is never paid again,
  only the calls in flight on the dead worker are.
- `vllm:` -> `RayVLLMLLM`: `ray.data.llm` vLLM engine replicas (replicas, tensor parallel
  size and batch size from the `ray:` config); rows stream back to the driver as they finish.

Global limits (datagen/llm/ray_gate.py): the run's budget (`budget_usd`), per-minute request
and token rates (configured or announced by the server's headers) and 429 `Retry-After`
cool-downs are held once, in a permit actor on the driver's node, and every actor's client asks
it before each attempt and reports after, so they hold for the cluster as they do locally: the
cap is never crossed by all actors together, a 429 seen by one actor pauses all of them, and
when the budget stops every actor stops sending, the replies in flight still land in the cache
and the driver raises the same `BudgetExceeded` (exit 75) with the cluster's spend. Only the
in-flight bound (and its adaptation) is split across the actors (`actor_options`). The
Batch API (`batch: true`) is not spread at all: the provider runs the batch, so
`StageContext.llm` sends it from the driver, as the local executor does.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from datagen.llm.base import (
    ChatRequest,
    Completion,
    PromptRequest,
    Request,
    ResultCallback,
    request_from_canonical,
    run_sync,
)
from datagen.llm.budget import BudgetExceeded
from datagen.llm.ray_gate import ClusterGate, driver_local_actor
from datagen.ray_cluster import RayConfig, connect

SINK_POLL_SECONDS = 0.2


def request_to_row(request: Request) -> str:
    """A request as the JSON text a Ray Dataset row carries (the cache key's own canonical form)."""
    return request.canonical()


def request_from_row(text: str) -> Request:
    return request_from_canonical(text)


def split_concurrency(total: int, actors: int) -> int:
    """Requests in flight per actor so that all actors together stay within `total`."""
    return max(1, total // max(1, actors))


def rows_per_batch(rows: int, actors: int, batch_size: int) -> int:
    """Requests per actor batch: `batch_size`, but a call smaller than actors x batch_size (a
    Self-Instruct round, say) is split evenly, so no actor idles while another does it all."""
    return max(1, min(batch_size, math.ceil(rows / max(1, actors))))


def actor_options(backend: str, options: dict[str, Any], config: RayConfig, default_concurrency: int) -> dict[str, Any]:
    """What each actor's own client is built with: its share of the in-flight bound (split,
    so the cluster keeps a local run's bound). The budget and the per-minute rates are not
    split: they are held once for the run by the permit gate (datagen/llm/ray_gate.py)."""
    if backend != "openai":
        return dict(options)
    shared = {k: v for k, v in options.items() if k not in {"budget", *RATE_OPTIONS}}
    total = int(options.get("max_concurrency") or default_concurrency)
    shared["max_concurrency"] = config.max_concurrency or split_concurrency(total, config.actors)
    return shared


RATE_OPTIONS = ("max_requests_per_minute", "max_tokens_per_minute")
# A permit not settled after this many seconds beyond the client's timeout belongs to a dead worker.
LEASE_SLACK_SECONDS = 60.0


def gate_limits(options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The run's whole per-minute allowance for one backend, as the permit gate holds it."""
    return {
        "requests_per_minute": options.get("max_requests_per_minute") or None,
        "tokens_per_minute": options.get("max_tokens_per_minute") or None,
        "period": float(options.get("rate_period") or 60.0),
        "lease": 2 * timeout + LEASE_SLACK_SECONDS,
    }


# --------------------------------------------------------------------------- the actors


class ResultSink:
    """Lives on the driver's node (a Ray actor): completions land here the moment an actor has
    them, so a worker killed mid-batch loses only the calls it had in flight."""

    def __init__(self) -> None:
        self._done: dict[int, Completion] = {}
        self._fresh: list[int] = []
        self._fatal: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """A worker hit an error no retry fixes (bad key, unknown model): stop everyone."""
        if self._fatal is None:
            self._fatal = error

    def fatal(self) -> BaseException | None:
        return self._fatal

    def put(self, index: int, completion: Completion) -> None:
        if index not in self._done and completion.ok:
            self._done[index] = completion
            self._fresh.append(index)

    def already_done(self, indices: list[int]) -> list[int]:
        if self._fatal is not None:  # the run is stopping: send nothing more
            return list(indices)
        return [i for i in indices if i in self._done]

    def drain(self) -> list[tuple[int, Completion]]:
        fresh, self._fresh = self._fresh, []
        return [(i, self._done[i]) for i in fresh]


class LLMWorker:
    """One actor of the pool: our own backend, built once per actor, answering a batch at a time.

    Failed requests (after the client's own retries) are returned in the batch, not put in the
    sink: they are results too (counted, dropped by the stage), but must never be cached."""

    def __init__(self, spec: str, options: dict[str, Any], sink: Any, gate: Any = None,
                 cap: float | None = None) -> None:
        from datagen.llm import make_backend

        self.sink = sink
        self.permits = None
        if gate is not None:  # budget, rates and cool-downs are the run's: the gate's stand-ins
            from datagen.llm import GATE_OPTIONS
            from datagen.llm.endpoint_options import EndpointOptions
            from datagen.llm.ray_gate import GatedBudget, GatedLimiter

            budget = GatedBudget(gate, cap) if cap is not None else None
            own = EndpointOptions.from_flat({k: v for k, v in options.items() if k not in GATE_OPTIONS}).limiter()
            self.permits = GatedLimiter(gate, spec, own, budget)
            options = {**options, "limiter": self.permits, "budget": budget}
        self.backend = make_backend(spec, **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import ray

        indices = [int(i) for i in batch["index"]]
        done = set(ray.get(self.sink.already_done.remote(indices)))
        todo = [(i, text) for i, text in zip(indices, batch["request"], strict=True) if i not in done]
        pending: list[Any] = []

        def landed(j: int, completion: Completion) -> None:
            if completion.ok:
                pending.append(self.sink.put.remote(todo[j][0], completion))

        requests = [request_from_row(str(text)) for _, text in todo]
        try:
            results = run_sync(self.backend.generate(requests, landed)) if requests else []
        except Exception as exc:
            if not _is_datagen_error(exc):
                raise
            if self.permits is not None:
                self.permits.flush()
            # Handed to the driver as the object itself: Ray's own wrapping of a raised
            # exception would bury the one-line message under a remote traceback.
            ray.get([*pending, self.sink.fail.remote(exc)])
            results = [Completion(error=f"fatal: {exc}")] * len(requests)
        ray.get(pending)  # the batch only counts as done once the sink holds every success
        if self.permits is not None:  # ... and the gate every settlement (the driver reads its spend)
            self.permits.flush()
        errors = {todo[j][0]: c.error or "internal: empty completion" for j, c in enumerate(results) if not c.ok}
        return {"index": np.asarray(indices, dtype=np.int64),
                "error": np.asarray([errors.get(i, "") for i in indices], dtype=object)}


# --------------------------------------------------------------------------- driver side


class RayPoolLLM:
    """`openai:` and `local:` backends over an actor pool; same identity as the wrapped backend."""

    def __init__(self, spec: str, options: dict[str, Any], config: RayConfig, gate: ClusterGate | None = None) -> None:
        from datagen.llm import backend_facts

        self.spec = spec
        self.config = config
        self._owns_gate = gate is None
        self.gate = gate if gate is not None else ClusterGate(options.get("budget"))
        # The identity is the wrapped backend's (CachedLLM keys on it, so a run resumes across
        # executors), read from the options: no client is built on the driver.
        self.facts = backend_facts(spec, options)
        self.name, self.backend, self.model = self.facts.name, self.facts.backend, self.facts.model
        self.supports_json_schema = self.facts.supports_json_schema
        self.max_concurrency = self.facts.max_concurrency
        self.actor_options = actor_options(self.backend, options, config, self.facts.max_concurrency)
        self.gate_limits = gate_limits(options, self.facts.timeout) if self.backend == "openai" else None

    def cache_identity(self) -> dict[str, Any]:
        return self.facts.identity

    async def generate(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        import asyncio

        # Join (or start) the cluster on this thread, not the helper thread below: a Ray
        # instance started here dies with the thread that started it (parent-death signal).
        connect(self.config)
        return await asyncio.to_thread(self._generate_blocking, list(requests), on_result)

    def _generate_blocking(
        self, requests: list[ChatRequest], on_result: ResultCallback | None
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        if not requests:
            return []
        ray = connect(self.config)
        sink = driver_local_actor(ray, ResultSink)
        worker_kwargs: dict[str, Any] = {"spec": self.spec, "options": self.actor_options, "sink": sink}
        gate = self.gate if self.gate_limits is not None else None
        if gate is not None:
            worker_kwargs.update(gate=gate.handle(ray, self.spec, **self.gate_limits), cap=gate.cap)
        rows = [{"index": i, "request": request_to_row(r)} for i, r in enumerate(requests)]
        per_batch = rows_per_batch(len(rows), self.config.actors, self.config.batch_size)
        blocks = max(1, math.ceil(len(rows) / per_batch))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            LLMWorker,
            batch_size=per_batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.config.actors),
            num_cpus=self.config.cpus_per_actor,
            fn_constructor_kwargs=worker_kwargs,
        )

        def deliver(index: int, completion: Completion) -> None:
            if results[index] is None:
                results[index] = completion
                if on_result:
                    on_result(index, completion)

        errors: dict[int, str] = {}
        consumer = _Consumer(dataset, errors)
        consumer.start()
        try:
            while consumer.is_alive():
                consumer.join(SINK_POLL_SECONDS)
                for index, completion in ray.get(sink.drain.remote()):
                    deliver(index, completion)
                if gate is not None:
                    gate.sync(ray)  # the driver's budget line shows the cluster's spend, live
                fatal = ray.get(sink.fatal.remote())
                # Out of money: nothing new is sent anywhere (the gate refuses), but replies
                # in flight are paid for, so wait for the pool to wind down and keep them.
                if fatal is not None and not isinstance(fatal, BudgetExceeded):
                    raise fatal
            fatal = ray.get(sink.fatal.remote())
            for index, completion in ray.get(sink.drain.remote()):
                deliver(index, completion)
            if gate is not None:
                gate.sync(ray)
            if isinstance(fatal, BudgetExceeded) and gate is not None and gate.budget is not None:
                raise BudgetExceeded(gate.budget.spent, gate.budget.cap)
            if fatal is not None:
                raise fatal
            if consumer.failure is not None:
                raise consumer.failure
            for index, completion in ray.get(sink.drain.remote()):
                deliver(index, completion)
            for index, error in errors.items():
                deliver(index, Completion(error=error))
        finally:
            # After a fatal error the workers skip what is left (the sink says so): let the
            # dataset wind down before its sink goes, so it ends quietly.
            consumer.join(5)
            ray.kill(sink)
        return [r if r is not None else Completion(error="internal: no result from the Ray pool") for r in results]

    def close(self) -> None:
        if self._owns_gate:
            self.gate.close()


class _Consumer(threading.Thread):
    """Pulls the dataset to the end (that is what makes Ray run it) and keeps the failures."""

    def __init__(self, dataset: Any, errors: dict[int, str]) -> None:
        super().__init__(daemon=True, name="ray-pool-consumer")
        self.dataset = dataset
        self.errors = errors
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in self.dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, error in zip(batch["index"], batch["error"], strict=True):
                    if error:
                        self.errors[int(index)] = str(error)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the driver thread
            self.failure = exc


def _is_datagen_error(exc: BaseException) -> bool:
    try:
        from datagen.errors import DatagenError
    except ImportError:  # before the fail-fast work lands
        return False
    return isinstance(exc, DatagenError) and type(exc).__module__.startswith("datagen")


# --------------------------------------------------------------------------- vLLM on Ray


def vllm_rows(requests: Sequence[Request]) -> list[dict[str, Any]]:
    """One row per sample: `ray.data.llm` returns one output per row, so `n` fans out here.
    Sample k > 0 gets seed + 1000 + k, as the OpenAI client's fan-out does."""
    rows = []
    for index, request in enumerate(requests):
        for k in range(request.n):
            seed = request.seed if request.seed is None or k == 0 else request.seed + 1000 + k
            params: dict[str, Any] = {
                "temperature": request.temperature,
                "top_p": request.top_p,
                "max_tokens": request.max_tokens,
                "stop": list(request.stop) or None,
                "seed": seed,
            }
            schema = (request.response_format_dict() or {}).get("json_schema", {}).get("schema")
            if schema:
                params["structured_outputs"] = {"json": schema}
            rows.append({
                "index": index,
                "sample": k,
                **({"prompt": request.prompt} if isinstance(request, PromptRequest)
                   else {"messages": request.message_dicts()}),
                "sampling_params": {key: value for key, value in params.items() if value is not None},
            })
    return rows


def vllm_processor_config(model: str, config: RayConfig) -> Any:
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = {"tensor_parallel_size": config.tensor_parallel_size, **config.vllm_engine_kwargs}
    return vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs,
        concurrency=config.vllm_replicas,
        batch_size=config.vllm_batch_size,
    )


def _vllm_output(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": int(row["index"]),
        "sample": int(row["sample"]),
        "generated_text": row.get("generated_text") or "",
        "num_input_tokens": int(row.get("num_input_tokens") or 0),
        "num_generated_tokens": int(row.get("num_generated_tokens") or 0),
    }


class RayVLLMLLM:
    """`vllm:MODEL` over `ray.data.llm` engine replicas. Completions are assembled per request
    (all `n` samples) as rows stream back, and committed by `CachedLLM` one by one."""

    backend = "vllm"
    supports_json_schema = True

    def __init__(self, model: str, config: RayConfig) -> None:
        self.model = model
        self.name = f"vllm:{model}"
        self.config = config

    def cache_identity(self) -> dict[str, Any]:
        """Not the local vLLM backend's: here each of the n samples is its own row and seed."""
        return {"model": self.model, "via": "ray.data.llm", "engine_kwargs": self.config.vllm_engine_kwargs}

    def processor(self) -> Any:
        """The `ray.data.llm` processor: chat template, tokenize, vLLM engine, detokenize."""
        import ray.data.llm as ray_llm

        connect(self.config)
        build = getattr(ray_llm, "build_processor", None) or ray_llm.build_llm_processor  # renamed in Ray 2.5x
        return build(vllm_processor_config(self.model, self.config), postprocess=_vllm_output)

    def build(self, requests: Sequence[ChatRequest]) -> Any:
        """The lazy Ray Dataset that runs these requests (nothing executes until it is read)."""
        ray = connect(self.config)
        return self.processor()(ray.data.from_items(vllm_rows(requests)))

    async def generate(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        import asyncio

        # Join (or start) the cluster on this thread, not the helper thread below: a Ray
        # instance started here dies with the thread that started it (parent-death signal).
        connect(self.config)
        return await asyncio.to_thread(self._generate_blocking, list(requests), on_result)

    def _generate_blocking(self, requests: list[ChatRequest], on_result: ResultCallback | None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        parts: dict[int, dict[int, dict[str, Any]]] = {}
        for row in self.build(requests).iter_rows():
            index = int(row["index"])
            parts.setdefault(index, {})[int(row["sample"])] = row
            request = requests[index]
            if len(parts[index]) == request.n:
                results[index] = assemble_vllm_completion(request, parts.pop(index))
                if on_result:
                    on_result(index, results[index])
        return [r if r is not None else Completion(error="internal: no result from vLLM on Ray") for r in results]

    def close(self) -> None:
        pass


def assemble_vllm_completion(request: ChatRequest, samples: dict[int, dict[str, Any]]) -> Completion:
    ordered = [samples[k] for k in sorted(samples)]
    return Completion(
        texts=[s["generated_text"] for s in ordered],
        finish_reasons=["length" if s["num_generated_tokens"] >= request.max_tokens else "stop" for s in ordered],
        prompt_tokens=int(ordered[0]["num_input_tokens"]) if ordered else 0,
        completion_tokens=sum(int(s["num_generated_tokens"]) for s in ordered),
    )


def make_ray_backend(spec: str, options: dict[str, Any], config: RayConfig, gate: ClusterGate | None = None) -> Any:
    """The Ray-executor twin of `make_llm(spec).inner`; `gate`: the run's permit gate (one per
    run, shared by its backends, so the budget is one budget)."""
    from datagen.llm import parse_spec

    backend, model = parse_spec(spec)
    if backend == "vllm":
        return RayVLLMLLM(model or "", config)
    return RayPoolLLM(spec, options, config, gate)
