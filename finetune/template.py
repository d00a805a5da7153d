"""Chat templates for training with loss on assistant tokens only.

`SFTConfig(assistant_only_loss=True)` asks the tokenizer for an assistant mask, which
transformers derives from `{% generation %}...{% endgeneration %}` markers in the chat template.
Most stock templates (SmolLM2's included) have none, and TRL only patches the families it
knows. The training template must render *exactly* the same text as the stock one, otherwise
the model learns a format it never sees at inference. So, in order:

1. the stock template already has markers -> use it;
2. a template the user supplied (a .jinja file or the text) -> use it, warn if it renders
   differently from the stock one on the probe conversations;
3. TRL knows a training version of the stock template -> use TRL's;
4. the stock template is ChatML-like (SmolLM2, plain ChatML) -> `templates/chatml_training.jinja`
   with the stock template's default system prompt filled in, accepted only if it renders every
   probe conversation identically;
5. otherwise fail with a message that says how to supply one.

The saved model keeps the stock template: the markers are for training only, and some inference
engines do not understand the `generation` tag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Read through importlib.resources: a wheel, an sdist install and a checkout alike.
TEMPLATES_DIR = files("finetune") / "templates"
CHATML_TRAINING = "chatml_training.jinja"
_DEFAULT_SYSTEM_SLOT = "default_system = none"
_PROBE = "PROBE-7f3a: what is 2 + 2?"

# Conversations that exercise every branch of a ChatML-style template: with and without a system
# turn, multi-turn, empty and awkward contents (newlines, braces, quotes, non-ASCII, Jinja-like text).
PROBE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    [
        {"role": "user", "content": "Count to two."},
        {"role": "assistant", "content": "1\n2"},
        {"role": "user", "content": "And back?"},
        {"role": "assistant", "content": "2\n1"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ],
    [
        {"role": "system", "content": "Multi\nline system\n"},
        {"role": "user", "content": "Quote: \"x\" and 'y' {{ not_a_var }} {% raw %}"},
        {"role": "assistant", "content": "```python\nprint({'a': 1})\n```"},
        {"role": "user", "content": "Ünïcödé — 日本語 ✓"},
        {"role": "assistant", "content": ""},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "  leading and trailing spaces  "}],
    [{"role": "user", "content": "Only a question"}],
    [{"role": "system", "content": "sys only"}, {"role": "user", "content": "q"}],
]


@dataclass
class TrainingTemplate:
    template: str  # the template to train with (has generation markers)
    stock: str | None  # the tokenizer's own template, restored before saving
    source: str  # "stock", "user", "trl", "chatml"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source}


def has_generation_markers(template: str) -> bool:
    from trl.chat_template_utils import has_generation_markers as _has

    return _has(template)


def stock_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named variants: the default one is what apply_chat_template uses
        template = template.get("default")
    return template


def render(tokenizer: Any, template: str, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def mismatches(
    tokenizer: Any, stock: str, training: str, conversations: Iterable[list[dict[str, str]]], limit: int = 3
) -> list[dict[str, str]]:
    """Conversations the two templates render differently (with and without the generation prompt)."""
    found: list[dict[str, str]] = []
    for messages in conversations:
        for gen in (False, True):
            try:
                want = render(tokenizer, stock, messages, gen)
            except Exception:  # noqa: BLE001 - a stock template may reject a shape (e.g. no user turn)
                continue
            try:
                got = render(tokenizer, training, messages, gen)
            except Exception as exc:  # noqa: BLE001
                got = f"<render error: {exc}>"
            if got != want:
                found.append({"stock": want, "training": got})
                if len(found) >= limit:
                    return found
    return found


def chatml_training_template(tokenizer: Any, stock: str) -> str | None:
    """Our ChatML training template adapted to `stock` (its default system prompt, if any), or
    None when `stock` does not render the ChatML layout."""
    probe = [{"role": "user", "content": _PROBE}]
    try:
        rendered = render(tokenizer, stock, probe)
    except Exception:  # noqa: BLE001
        return None
    turn = f"<|im_start|>user\n{_PROBE}<|im_end|>\n"
    if not rendered.endswith(turn):
        return None
    prefix = rendered[: -len(turn)]
    default_system: str | None = None
    if prefix:
        head, tail = "<|im_start|>system\n", "<|im_end|>\n"
        if not (prefix.startswith(head) and prefix.endswith(tail)):
            return None
        default_system = prefix[len(head) : -len(tail)]
    text = (TEMPLATES_DIR / CHATML_TRAINING).read_text(encoding="utf-8")
    if default_system is not None:
        # A JSON string (ASCII-escaped) is a valid Jinja string literal.
        text = text.replace(_DEFAULT_SYSTEM_SLOT, f"default_system = {json.dumps(default_system)}", 1)
    return text


def load_user_template(spec: str | Path) -> str:
    """A template given as the template text itself, or as a path to a .jinja file."""
    if isinstance(spec, str) and ("{%" in spec or "{{" in spec):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: chat template file not found")
    return path.read_text(encoding="utf-8")


def resolve_training_template(
    tokenizer: Any,
    user_template: str | Path | None = None,
    conversations: Sequence[list[dict[str, str]]] = (),
) -> TrainingTemplate:
    """Pick the template to train with (see the module docstring). `conversations` (the training
    data) are checked on top of the probes when our ChatML template is used."""
    stock = stock_template(tokenizer)
    if user_template is not None:
        template = load_user_template(user_template)
        if not has_generation_markers(template):
            raise ValueError(
                "the chat template you supplied has no {% generation %}...{% endgeneration %} markers around the "
                "assistant text, so assistant-only loss cannot find the assistant tokens"
            )
        if stock and (diff := mismatches(tokenizer, stock, template, [*PROBE_CONVERSATIONS, *conversations], 1)):
            logger.warning(
                "the supplied training template renders differently from the tokenizer's own template, e.g.\n"
                "stock:    %r\ntraining: %r", diff[0]["stock"], diff[0]["training"],
            )
        return TrainingTemplate(template=template, stock=stock, source="user")
    if not stock:
        raise ValueError(
            "the base model's tokenizer has no chat template (a base, not an instruct model?): supply one with "
            "{% generation %} markers (FinetuneConfig.chat_template / --chat-template FILE.jinja)"
        )
    if has_generation_markers(stock):
        return TrainingTemplate(template=stock, stock=stock, source="stock")
    try:
        from trl.chat_template_utils import get_training_chat_template

        trl_template = get_training_chat_template(tokenizer)
    except (ValueError, TypeError):
        trl_template = None
    except Exception as exc:  # noqa: BLE001 - TRL's probing renders tool calls; odd templates may fail
        logger.debug("TRL could not inspect the chat template: %s", exc)
        trl_template = None
    if trl_template:
        return TrainingTemplate(template=trl_template, stock=stock, source="trl")
    ours = chatml_training_template(tokenizer, stock)
    if ours is not None:
        diff = mismatches(tokenizer, stock, ours, [*PROBE_CONVERSATIONS, *conversations], 1)
        if not diff:
            return TrainingTemplate(template=ours, stock=stock, source="chatml")
        logger.debug("ChatML training template differs from stock: %r", diff[0])
    raise ValueError(
        "the base model's chat template has no {% generation %} markers and is neither one TRL can patch nor "
        "ChatML-like, so the assistant tokens cannot be found for assistant-only loss. Supply a copy of the "
        "model's template with {% generation %}...{% endgeneration %} around each assistant message's content "
        "and end-of-turn token (FinetuneConfig.chat_template / --chat-template FILE.jinja), or train on the "
        "whole sequence (assistant_only_loss=False / --no-assistant-only-loss)."
    )
