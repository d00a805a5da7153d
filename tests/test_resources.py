"""The shipped files, read through importlib.resources: from the editable install here (the
installed wheel and sdist are tests/test_wheel_install.py's), a user's prompt folder first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_prompt_folder_overrides_by_name_and_the_rest_stay_bundled(tmp_path, monkeypatch) -> None:
    from datagen.prompts import render

    monkeypatch.delenv("DATAGEN_PROMPTS", raising=False)
    (tmp_path / "evol_breadth.txt").write_text("mine: {{ instruction }}\n")
    assert render("evol_breadth", prompts_dir=tmp_path, instruction="x") == "mine: x"
    bundled = render("evol_deepen", instruction="x")
    assert render("evol_deepen", prompts_dir=tmp_path, instruction="x") == bundled
    assert bundled == (ROOT / "prompts" / "evol_deepen.txt").read_text().replace("{{ instruction }}", "x").strip()
    monkeypatch.setenv("DATAGEN_PROMPTS", str(tmp_path))
    assert render("evol_breadth", instruction="y") == "mine: y"


def test_prompt_hash_covers_every_bundled_prompt_and_the_override(tmp_path, monkeypatch) -> None:
    from datagen.prompts import bundled_prompts
    from datagen.run_files import prompts_hash

    monkeypatch.delenv("DATAGEN_PROMPTS", raising=False)
    assert [p.name for p in bundled_prompts()] == sorted(p.name for p in (ROOT / "prompts").glob("*.txt"))
    (tmp_path / "evol_breadth.txt").write_text("mine\n")
    assert prompts_hash(str(tmp_path)) != prompts_hash(None)


def test_bundled_pipelines_name_shipped_files_from_any_folder(tmp_path, monkeypatch) -> None:
    """`seeds/…` and `pipelines/data/…` in a bundled pipeline are found outside the checkout."""
    from datagen.pipeline import Pipeline
    from datagen.resources import shipped_path
    from datagen.stages.decontaminate import load_held_out

    monkeypatch.chdir(tmp_path)
    assert shipped_path("seeds/seed_tasks.jsonl").read_bytes() == (ROOT / "seeds" / "seed_tasks.jsonl").read_bytes()
    assert shipped_path("pipelines/data/heldout.jsonl").name == "heldout.jsonl"
    assert shipped_path("seeds/nothing.jsonl") is None and shipped_path("elsewhere/a.jsonl") is None
    quickstart = Pipeline.from_yaml("quickstart")
    assert len(quickstart.load_input()[0]) == 175
    assert quickstart.resolve_path("pipelines/data/heldout.jsonl") == shipped_path("pipelines/data/heldout.jsonl")
    items, sets = load_held_out(["pipelines/data/heldout.jsonl"])
    assert items and sets[0]["path"] == "pipelines/data/heldout.jsonl"


def test_a_checkout_on_pythonpath_finds_its_files_uninstalled() -> None:
    """The vLLM test venv runs ours from the checkout on PYTHONPATH, with no install (-S: no
    site-packages, so no editable finder)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from datagen.resources import SEEDS, resource_path; "
            "print(resource_path(SEEDS, 'seed_tasks.jsonl'))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == ROOT / "seeds" / "seed_tasks.jsonl"
