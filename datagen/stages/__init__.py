"""Stages: `run(records, ctx, config) -> StageResult`. A stage never knows its predecessor.

Each module here that ends in `registry.register(Stage(...))` is a stage; the registry finds
it by scanning this package, so adding a stage is adding a file (ARCHITECTURE.md).
"""
