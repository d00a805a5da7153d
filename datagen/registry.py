"""The stage registry: each stage declares itself once, everything else is derived from it.

A stage module ends with one `register(Stage(...))` naming its YAML name, config model,
`run`, dry-run planner (or `NO_LLM_CALLS`), the `RecordMeta` keys it reads and writes, and
its command. The runner, the YAML validation, `datagen --help`, `--dry-run`, `datagen
pipelines` and the meta-contract test all read this one table, so a stage can no longer be
known to the runner but missing from the dry run (which once priced a new LLM stage at $0).

Built-in stages are the modules of `datagen.stages` that register one (found by scanning the
package: adding a stage is adding a file); plugins register the same way from the module
their `datagen.plugins` entry point names, so a third-party stage is a first-class stage.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from datagen.context import StageContext
    from datagen.plan import Records, StagePlan
    from datagen.records import Record, StageResult

StageRun = Callable[[list["Record"], "StageContext", Any], "StageResult"]
Planner = Callable[["Records", Any, str, "str | None"], "StagePlan"]


def NO_LLM_CALLS(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:  # noqa: N802
    """The planner of a stage that never calls an LLM: what comes in goes out, at no cost."""
    from datagen.plan import StagePlan, finish

    return finish(StagePlan("", flow.count, flow.count), flow)


@dataclass(frozen=True)
class Command:
    """How the stage appears as `datagen VERB`; every config field becomes a flag by itself."""

    verb: str
    description: str
    flag_aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    value_parsers: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)
    skip_fields: Sequence[str] = ()
    input_aliases: Sequence[str] = ()
    input_required: bool = True
    # Flags the config model cannot express (e.g. `--no-judge`) and how they map onto config values.
    add_flags: Callable[[argparse.ArgumentParser], None] | None = None
    config_from_flags: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    # Records to run on when --input is optional (Self-Instruct defaults to the bundled seeds).
    records_from_args: Callable[[argparse.Namespace], list[Record]] | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[BaseModel]
    run: StageRun
    plan: Planner
    help: str
    command: Command
    # Where it sits in a typical pipeline: orders `datagen --help`, the docs and the contract test.
    position: float = 100
    # RecordMeta keys: `reads` must be written by the reader or an earlier stage (checked when a
    # pipeline loads, before any call); `uses` are read when present; `writes` are what it hands on.
    # A config-dependent need is a function of the stage's config.
    reads: frozenset[str] | Callable[[Any], frozenset[str]] = frozenset()
    uses: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    # Prompt files (names without .txt) only this stage renders, and of those the ones a config
    # really renders (default: all). A run leaves the others out of its resume hash, so shipping
    # a new stage's prompt, or an optional prompt left off, never re-runs finished stages.
    prompts: frozenset[str] = frozenset()
    prompts_used: Callable[[Any], frozenset[str]] | None = None

    @property
    def makes_llm_calls(self) -> bool:
        return self.plan is not NO_LLM_CALLS

    def reads_for(self, config: Any) -> frozenset[str]:
        return self.reads(config) if callable(self.reads) else self.reads


_registered: dict[str, Stage] = {}
_loaded = False


def register(stage: Stage) -> Stage:
    """Add a stage; a second stage under a taken name or verb is a programming error."""
    for other in _registered.values():
        if other is not stage and (other.name in (stage.name, stage.command.verb)
                                   or other.command.verb in (stage.name, stage.command.verb)):
            if other.config is stage.config and other.run is stage.run:
                return other  # the same module imported twice (e.g. under two names): harmless
            raise ValueError(f"stage {stage.name!r} ({stage.command.verb}) clashes with {other.name!r}")
    _registered[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """For tests that register a throw-away stage."""
    _registered.pop(name, None)


def stages() -> dict[str, Stage]:
    """Every stage, in pipeline position order (built-ins and plugins alike)."""
    _load()
    return dict(sorted(_registered.items(), key=lambda item: item[1].position))


def resolve(name: str) -> Stage | None:
    """A stage by its YAML name or its command verb (`filter` is `quality`)."""
    table = stages()
    if name in table:
        return table[name]
    return next((s for s in table.values() if s.command.verb == name), None)


def prompts_not_rendered(run: Sequence[tuple[str, Any]]) -> frozenset[str]:
    """Stage-owned prompt names that no (stage name, config) of `run` renders: left out of the
    run's prompt hash."""
    owned = frozenset(p for s in stages().values() for p in s.prompts)
    used: set[str] = set()
    for name, config in run:
        stage = stages().get(name)
        if stage is not None:
            used |= stage.prompts_used(config) if stage.prompts_used is not None else stage.prompts
    return owned - used


def names() -> list[str]:
    return list(stages())


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # Found by scanning, not imported by name: the registry sits below the stages it lists.
    package = importlib.import_module("datagen.stages")
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{module.name}")
    from datagen.plugins import load_plugins

    load_plugins()
