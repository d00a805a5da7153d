"""Where the `ray` executor runs: the cluster settings and the one place that connects.

Kept apart from the LLM and embedding pools so both share one config (the YAML `ray:`
block) and one connection. Ray is an optional dependency (`pip install 'datagen[ray]'`):
nothing here imports it at module level, so the local executor never pays its import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")


class RayConfig(BaseModel):
    """How record-parallel work is spread over a Ray cluster. None of these change any answer,
    so they are not part of a stage's hash: a run started locally resumes on a cluster."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="cluster to join, e.g. 10.0.0.1:6379 or ray://host:10001; None: RAY_ADDRESS, else a "
        "Ray instance started for this run on this machine",
    )
    actors: int = Field(2, ge=1, description="LLM client actors (openai:/local backends); each runs our own client")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs each LLM client or embedding actor reserves")
    batch_size: int = Field(32, ge=1, description="requests shipped to an actor at once (smaller: less redone "
                            "when an actor dies; larger: less per-batch overhead)")
    max_concurrency: int | None = Field(
        None, ge=1,
        description="requests in flight per actor; None: the backend's max_concurrency split across the actors, "
        "so the cluster as a whole keeps the same bound as a local run",
    )
    embed_actors: int = Field(2, ge=1, description="embedding actors (each loads the embedding model once)")
    embed_batch_size: int = Field(512, ge=1, description="texts per embedding batch shipped to an actor")
    gpus_per_embed_actor: float | None = Field(
        None, ge=0, description="GPUs per embedding actor; None: 1 when the cluster has GPUs, else 0"
    )
    vllm_replicas: int = Field(1, ge=1, description="vLLM engine replicas for vllm: backends (ray.data.llm)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM replica (tensor parallel)")
    vllm_batch_size: int = Field(32, ge=1, description="rows per batch sent to a vLLM replica")
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vLLM engine arguments, e.g. {max_model_len: 4096}"
    )


def package_root() -> Path:
    """The folder holding the `datagen` package; shipped to workers that lack an install."""
    return Path(__file__).resolve().parent.parent


def connect(config: RayConfig) -> Any:
    """Join (or start) the cluster once per process and return the `ray` module.

    Call it from a long-lived thread (the driver's main thread): when it starts a Ray instance
    here, that instance's daemons get a parent-death signal tied to the calling thread.

    Workers get our code through `runtime_env.py_modules`, so a cluster whose nodes never had
    datagen installed still runs it (the same code as the driver, never a stale copy)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor: ray needs Ray: pip install 'datagen[ray]'") from exc
    if ray.is_initialized():
        return ray
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    root = package_root()
    runtime_env = {
        "py_modules": [str(root / "datagen")],
        # Workers must not try to reach the model hub either (see datagen.embed.load_model).
        "env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"},
    }
    options: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False, "logging_level": "WARNING"}
    if address is None:  # a throwaway instance for this run, on this machine: no dashboard to serve,
        options["include_dashboard"] = False
        # and workers import our code first even where another datagen is installed (editable)
        paths = [str(root), os.environ.get("PYTHONPATH", "")]
        runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    ray.init(address=address, **options)
    _quiet_progress(ray)
    return ray


def disconnect() -> None:
    """Leave the cluster (a Ray instance this process started goes away with it)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _quiet_progress(ray: Any) -> None:
    """Ray Data draws its own progress bars on stderr; our stages already draw theirs."""
    # "Dataset ... execution finished" per dataset, at INFO: Ray Data re-reads its logging
    # config at every execution (resetting a level set here), and only this variable outlives that.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False


def cluster_gpus(ray: Any) -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))
