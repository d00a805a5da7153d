"""Personas: one-line descriptions of who is asking, to vary the voice of synthesis prompts.

PersonaHub showed that conditioning the same prompt on many different personas multiplies
the diversity of what a model writes at no extra cost per call. We ship our own set
(`seeds/personas.txt`, packaged as `datagen._seeds`): one persona a line, `#` lines are
comments. A stage's `personas:` option is `bundled` (that set), a path to a file of the same
form (`.txt`, or `.jsonl` with a `persona` key per row), or off (`null` / `none`).

Which persona a record gets is a pure function of the run's seed and a salt (the record id,
the request number), so a rerun picks the same ones and its cached calls still match.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path

OFF = {"", "none", "off", "false", "null"}


def bundled_personas_path() -> Path:
    repo = Path(__file__).resolve().parent.parent / "seeds" / "personas.txt"
    if repo.exists():
        return repo
    from importlib.resources import files

    return Path(str(files("datagen._seeds") / "personas.txt"))


def personas_enabled(option: str | None) -> bool:
    return option is not None and option.strip().lower() not in OFF


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[str, ...]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the persona file ({exc.strerror or exc})") from None
    out: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if file.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("persona"), str):
                raise ValueError(f"{path}:{number}: expected an object with a 'persona' string")
            line = row["persona"].strip()
        out.append(line)
    if not out:
        raise ValueError(f"{path}:1: the persona file holds no persona")
    return tuple(out)


def load_personas(option: str | None) -> tuple[str, ...]:
    """The personas an option names: () when off, the bundled set for `bundled`."""
    if not personas_enabled(option):
        return ()
    assert option is not None
    if option.strip().lower() == "bundled":
        return _load(str(bundled_personas_path()))
    return _load(str(Path(option).expanduser()))


def pick_persona(personas: tuple[str, ...], seed: int, salt: str) -> str | None:
    """The persona for one record or request; the same (seed, salt) always gets the same one."""
    if not personas:
        return None
    return random.Random(f"{seed}:persona:{salt}").choice(personas)


def persona_fingerprints(options: list[str | None]) -> dict[str, str]:
    """Persona option -> sha256 of the file it names, for every option that is on: part of a
    run's resume hash, so editing a persona file re-runs the stages that read it."""
    out: dict[str, str] = {}
    for option in options:
        if personas_enabled(option):
            assert option is not None
            path = bundled_personas_path() if option.strip().lower() == "bundled" else Path(option).expanduser()
            try:
                out[option] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                out[option] = "missing"  # the stage itself reports the unreadable file
    return out
