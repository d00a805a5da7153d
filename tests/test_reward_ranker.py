"""The reward-model ranker with a reward model the test builds and trains (never a download):
after a few Bradley-Terry steps on planted good/bad pairs it must rank a held-out planted pair
right, through distill's best-of-n and the preference stage's pairs."""

from __future__ import annotations

import pytest
from scripted_llm import ScriptedLLM, make_ctx
from test_distill import build_reward_model

from datagen.records import Record, RecordMeta
from datagen.stages.distill import DistillConfig, reward_scores
from datagen.stages.distill import run as distill
from datagen.stages.preference import PreferenceConfig
from datagen.stages.preference import run as preference

TOPICS = ["tides", "rain", "wind", "snow", "fog", "frost", "hail", "dew", "thunder", "clouds"]


def good(topic: str) -> str:
    return f"{topic} happen because warm air and water interact , explained step by step with one example"


def bad(topic: str) -> str:
    return f"dunno {topic} lol whatever"


def train_reward_model(path, pairs, steps: int = 40) -> None:
    """Bradley-Terry: -log sigmoid(r(chosen) - r(rejected)), full batch, Adam."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)

    def encode(answers):
        texts = [tok.apply_chat_template([{"role": "user", "content": f"explain {t}"},
                                          {"role": "assistant", "content": a}], tokenize=False) for t, a in answers]
        return tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")

    chosen = encode([(t, c) for t, c, _ in pairs])
    rejected = encode([(t, r) for t, _, r in pairs])
    model.train()
    for _ in range(steps):
        margin = model(**chosen).logits[:, 0] - model(**rejected).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm") / "rm"
    texts = [f"explain {t} user assistant : {good(t)} {bad(t)}" for t in TOPICS]
    build_reward_model(path, texts, chat_template=True)
    held_out = [("fog", good("fog"), bad("fog"))]
    planted = [(t, good(t), bad(t)) for t in TOPICS if t != "fog"]
    # Before training a random model has no reason to prefer the good answer: record it, then train.
    before = _margin(path, held_out[0])
    train_reward_model(path, planted)
    return path, held_out, before


def _margin(path, pair) -> float:
    topic, chosen, rejected = pair
    context = [{"role": "user", "content": f"explain {topic}"}]
    good_score, bad_score = reward_scores(str(path), [(context, chosen), (context, rejected)], batch_size=2)
    return good_score - bad_score


def test_trained_reward_model_ranks_a_held_out_pair(reward_model):
    path, held_out, before = reward_model
    after = _margin(path, held_out[0])
    assert after > 1.0 and after > before + 1.0, (before, after)  # training made the preference, not chance


def test_reward_ranker_picks_best_of_n_and_forms_the_pair(reward_model):
    path, held_out, _ = reward_model
    ((topic, chosen, rejected),) = held_out
    teacher = ScriptedLLM(lambda req: [rejected, chosen], name="teacher")
    ctx = make_ctx(teacher)
    records = [Record(id="r1", instruction=f"explain {topic}", meta=RecordMeta(source="test"))]
    result = distill(records, ctx, DistillConfig(n=2, reward_model=str(path)))
    (out,) = result.kept
    assert out.output == chosen and out.meta.ranked_by == f"reward_model:{path}"
    pairs = preference(result.kept, ctx, PreferenceConfig())
    (pair,) = pairs.kept
    assert (pair.meta.chosen, pair.meta.rejected) == (chosen, rejected)
    assert pair.meta.chosen_score > pair.meta.rejected_score
