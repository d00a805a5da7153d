"""The dataset card: the Hub's parser reads its header, `datasets` loads every config it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_run import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scripted_module_server) -> Path:
    return make_run(tmp_path_factory.mktemp("card"), scripted_module_server.base_url, language=["en", "fr"])


def test_card_parses_and_says_how_it_was_made(run_dir: Path) -> None:
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(run_dir / "export" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["language"] == ["en", "fr"]
    assert "synthetic" in data["tags"] and data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in data["configs"]] == ["alpaca", "sharegpt", "messages", "records"]
    text = card.text
    for needed in ("## How it was made", "openai:test", "evol_breadth.txt",
                   "## The funnel", "exact_duplicate", "## Length and diversity", "Not decontaminated",
                   "## Limitations", "```yaml"):
        assert needed in text, needed


def test_every_config_loads_with_datasets(run_dir: Path) -> None:
    import json

    import datasets

    export = run_dir / "export"
    kept = len(json.loads((export / "alpaca.json").read_text()))
    assert kept > 0
    for name in ("alpaca", "sharegpt", "messages", "records"):
        loaded = datasets.load_dataset(str(export), name, split="train")
        assert len(loaded) == kept, name
    assert set(datasets.load_dataset(str(export), "alpaca", split="train").column_names) >= {"instruction", "output"}
    assert len(datasets.load_from_disk(str(export / "hf_dataset"))) == kept  # the folder the card names


def test_default_license_is_other(tmp_path: Path) -> None:
    from datagen.card import card_header

    header = card_header({"name": "x", "export": {"formats": ["messages"]}}, 12_000)
    assert header["license"] == "other" and header["size_categories"] == ["10K<n<100K"]
    assert header["configs"] == [{"config_name": "messages", "data_files": [{"split": "train", "path": "messages.jsonl"}],
                                  "default": True}]
