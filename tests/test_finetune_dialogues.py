"""SFT on dialogues: loss on every assistant turn and nothing else; packing keeps dialogues whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_helpers import smol_tokenizer, tiny_llama

from datagen.records import Message, Record
from finetune.data import fit_whole_turns, records_to_examples
from finetune.train import FinetuneConfig
from finetune.trainer_setup import make_trainer, prepare_tokenizer

TURNS = [("Plan a day in Lisbon.", "Morning: Alfama.\nAfternoon: Belém."),
         ("Make it rain-proof.", "Swap Belém for the Gulbenkian museum."),
         ("在哪里吃晚饭？", "Try a tasca in Mouraria — ask for the bacalhau.")]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def three_turn_record(rid: str = "d", suffix: str = "") -> Record:
    msgs = [Message(role="system", content="Be concise.")]
    for q, a in TURNS:
        msgs += [Message(role="user", content=q + suffix), Message(role="assistant", content=a + suffix)]
    return Record(id=rid, instruction=TURNS[0][0], output=TURNS[0][1], messages=msgs)


def trainer_rows(tmp_path: Path, records: list[Record], **options):
    examples, stats = records_to_examples(records)
    config = FinetuneConfig(method="full", eval_fraction=0, **options)
    tok = smol_tokenizer()
    prepare_tokenizer(tok, config, [e["messages"] for e in examples])
    trainer = make_trainer(tiny_llama(len(tok)), tok, examples, [], config, tmp_path / "trainer")
    return list(trainer.train_dataset), tok, examples, stats


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_loss_is_on_exactly_the_three_answers_and_their_end_tokens(tmp_path: Path) -> None:
    (row,), tok, (example,), stats = trainer_rows(tmp_path, [three_turn_record()], packing=False, max_length=1024)
    assert stats.multi_turn == 1
    messages = example["messages"]
    # The expected mask, built independently: render each prefix and mark, per assistant turn,
    # the tokens after its "<|im_start|>assistant\n" header up to and including its <|im_end|>.
    expected = [False] * len(row["input_ids"])
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False) + "<|im_start|>assistant\n"
        start = len(ids(tok, before))
        stop = start + len(ids(tok, m["content"] + "<|im_end|>"))
        for pos in range(start, stop):
            expected[pos] = True
    assert row["input_ids"] == ids(tok, tok.apply_chat_template(messages, tokenize=False))
    trained = [label != -100 for label in row["labels"]]
    assert trained == expected
    # Spelled out: the trained text is the three answers with their end tokens, nothing of the
    # system prompt, the user turns, the role headers or the newline after each <|im_end|>.
    spans, current = [], []
    for token, on in zip(row["input_ids"], trained, strict=True):
        if on:
            current.append(token)
        elif current:
            spans.append(tok.decode(current, skip_special_tokens=False))
            current = []
    assert spans == [a + "<|im_end|>" for _, a in TURNS]
    assert all(label in (-100, token) for label, token in zip(row["labels"], row["input_ids"], strict=True))


def test_packing_keeps_each_dialogue_whole_and_cuts_long_ones_at_a_turn(tmp_path: Path) -> None:
    records = [three_turn_record(f"d{i}", suffix=f" ({i})") for i in range(5)]
    records.append(three_turn_record("long", suffix=" " + "very " * 60))  # too long for one row
    rows, tok, examples, _ = trainer_rows(tmp_path, records, packing=True, max_length=256)
    fitted, shortened = fit_whole_turns(examples, tok, 256)
    assert shortened == 1
    cut = next(e for e in fitted if e["id"] == "long")["messages"]
    assert cut[-1]["role"] == "assistant" and len(cut) < 7  # whole exchanges only
    wanted = sorted(tok.apply_chat_template(e["messages"], tokenize=False) for e in fitted)
    segments = []
    for row in rows:
        start = 0
        for length in row["seq_lengths"]:
            segments.append(tok.decode(row["input_ids"][start : start + length], skip_special_tokens=False))
            start += length
    assert sorted(segments) == wanted  # every dialogue in exactly one row, in one piece, none truncated
