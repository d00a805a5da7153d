"""A fake backend for stage tests: implements the `LLM` protocol, replies from a script.

`reply(request) -> str | list[str] | Completion` decides each answer from the request (its
prompt text, n, seed), so a test states the behaviour it needs ("the equality check says no
for this instruction") instead of a fixed queue of replies. Every request is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from datagen.context import StageContext
from datagen.llm import CachedLLM, ChatRequest, Completion

Reply = str | list[str] | Completion


class ScriptedLLM:
    backend = "scripted"

    def __init__(
        self, reply: Callable[[ChatRequest], Reply], name: str = "scripted", json_schema: bool = False
    ):
        self.reply = reply
        self.name = name
        self.model = name
        self.supports_json_schema = json_schema
        self.requests: list[ChatRequest] = []

    async def generate(self, requests: Sequence[ChatRequest], on_result=None) -> list[Completion]:
        results = []
        for i, req in enumerate(requests):
            self.requests.append(req)
            out = self.reply(req)
            if isinstance(out, Completion):
                completion = out
            else:
                texts = [out] * req.n if isinstance(out, str) else list(out)
                completion = Completion(
                    texts=texts, finish_reasons=["stop"] * len(texts), completion_tokens=10
                )
            results.append(completion)
            if on_result:
                on_result(i, completion)
        return results

    def close(self) -> None:
        pass


def last_user(req: ChatRequest) -> str:
    return [c for role, c in req.messages if role == "user"][-1]


def make_ctx(*llms: ScriptedLLM, seed: int = 0) -> StageContext:
    """A context whose default backend is the first LLM; each is reachable by its name as spec."""
    ctx = StageContext(llm_spec=llms[0].name, seed=seed, progress=False)
    for llm in llms:
        ctx._llms[llm.name] = CachedLLM(llm, None)
    return ctx
