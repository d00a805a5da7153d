"""The training chat template renders exactly what the stock template renders, and the choice
of template (stock / TRL / ours / user / error) follows finetune.template's rules."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from finetune_helpers import smol_tokenizer

from finetune.template import (
    PROBE_CONVERSATIONS,
    TEMPLATES_DIR,
    has_generation_markers,
    mismatches,
    render,
    resolve_training_template,
)

PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Zephyr-style: not ChatML, not known to TRL.
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_PIECES = ["Hello", "two\nlines", "  padded  ", "{{ x }}", "{% if %}", "'quote' \"dq\"", "Ünï 日本 ✓", "", "\n",
           "<b>html</b>", "tab\tsep", "a" * 50]


def random_conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": " ".join(rng.choices(_PIECES, k=rng.randint(0, 3)))})
        for turn in range(rng.randint(1, 4)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(_PIECES, k=rng.randint(0, 4)))})
            if turn < 3 or rng.random() < 0.8:
                msgs.append({"role": "assistant", "content": " ".join(rng.choices(_PIECES, k=rng.randint(0, 4)))})
        out.append(msgs)
    return out


def test_template_file_ships_and_has_markers() -> None:
    text = (TEMPLATES_DIR / "chatml_training.jinja").read_text()
    assert has_generation_markers(text)


def test_smollm2_training_template_renders_identically_to_stock() -> None:
    tok = smol_tokenizer()
    stock = tok.chat_template
    assert not has_generation_markers(stock)  # otherwise this whole module would be unnecessary
    chosen = resolve_training_template(tok)
    assert chosen.source == "chatml"
    assert has_generation_markers(chosen.template)
    conversations = [*PROBE_CONVERSATIONS, *random_conversations(300)]
    compared = 0
    for messages in conversations:
        for gen in (False, True):
            assert render(tok, chosen.template, messages, gen) == render(tok, stock, messages, gen)
            compared += 1
    assert compared == 2 * len(conversations)
    # the default system prompt really is part of both renderings (so the slot was filled in)
    text = render(tok, chosen.template, [{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_plain_chatml_stock_gets_template_without_default_system() -> None:
    tok = smol_tokenizer()
    tok.chat_template = PLAIN_CHATML
    chosen = resolve_training_template(tok)
    assert chosen.source == "chatml"
    assert not mismatches(tok, PLAIN_CHATML, chosen.template, random_conversations(100, seed=1), limit=1)
    assert render(tok, chosen.template, [{"role": "user", "content": "hi"}]).startswith("<|im_start|>user")


def test_mismatch_detector_notices_a_one_character_difference() -> None:
    tok = smol_tokenizer()
    broken = PLAIN_CHATML.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + '\n\n'")
    assert mismatches(tok, PLAIN_CHATML, broken, PROBE_CONVERSATIONS)


def test_stock_template_with_markers_is_used_as_is() -> None:
    tok = smol_tokenizer()
    ours = resolve_training_template(tok).template
    tok.chat_template = ours
    chosen = resolve_training_template(tok)
    assert chosen.source == "stock" and chosen.template == ours


def test_template_trl_knows_is_patched_by_trl() -> None:
    import trl

    tok = smol_tokenizer()
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    chosen = resolve_training_template(tok)
    assert chosen.source == "trl" and has_generation_markers(chosen.template)


def test_unknown_non_chatml_template_fails_clearly_unless_user_supplies_one(tmp_path) -> None:
    tok = smol_tokenizer()
    tok.chat_template = ZEPHYR
    with pytest.raises(ValueError, match=r"generation.*markers"):
        resolve_training_template(tok)
    supplied = ZEPHYR.replace(
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}",
        "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
        "{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}{% else %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}",
    )
    path = tmp_path / "zephyr_training.jinja"
    path.write_text(supplied)
    chosen = resolve_training_template(tok, path)
    assert chosen.source == "user"
    assert not mismatches(tok, ZEPHYR, chosen.template, random_conversations(50), limit=1)


def test_user_template_without_markers_is_rejected() -> None:
    tok = smol_tokenizer()
    with pytest.raises(ValueError, match="no \\{% generation %\\}"):
        resolve_training_template(tok, PLAIN_CHATML)


def test_tokenizer_without_template_fails_clearly() -> None:
    tok = smol_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        resolve_training_template(tok)
