"""Personas in self_instruct: off by default (prompts and config hash unchanged), on: each
generation prompt names one persona and its records carry it in meta."""

from __future__ import annotations

from test_self_instruct import FakeLLM, fake_ctx, seed_records, small_config

from datagen.personas import load_personas
from datagen.stages.self_instruct import run


def generation_prompts(llm: FakeLLM) -> list[str]:
    return [p for p in llm.prompts if "Now invent" in p]


def test_off_by_default_prompts_and_config_as_before() -> None:
    llm = FakeLLM()
    result = run(seed_records(), fake_ctx(llm), small_config())
    assert all(p.endswith("continues from 9.") for p in generation_prompts(llm))  # nothing appended
    assert all(r.meta.persona is None for r in result.kept)
    assert "personas" not in small_config().model_dump()  # the resume hash of old configs holds
    assert '"persona"' not in result.kept[0].model_dump_json()


def test_each_request_gets_a_persona_and_its_records_keep_it() -> None:
    llm = FakeLLM()
    result = run(seed_records(), fake_ctx(llm), small_config(personas="bundled"))
    personas = set(load_personas("bundled"))
    prompts = generation_prompts(llm)
    used = [next(p for p in personas if p in prompt) for prompt in prompts]
    assert len(set(used)) > 1  # requests differ in who is asking
    assert all("as this person would ask it" in prompt for prompt in prompts)
    assert result.kept and all(r.meta.persona in used for r in result.kept)
    again = run(seed_records(), fake_ctx(FakeLLM()), small_config(personas="bundled"))
    assert [r.meta.persona for r in again.kept] == [r.meta.persona for r in result.kept]  # seeded
