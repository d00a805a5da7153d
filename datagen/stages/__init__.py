"""Stages: `run(records, ctx, config) -> StageResult`. A stage never knows its predecessor."""

from datagen.stages.context import StageContext

__all__ = ["StageContext"]
