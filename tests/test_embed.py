"""Embedders: the static (model2vec) default, MiniLM, any folder; hub offline only while loading."""

from __future__ import annotations

import os

import numpy as np
import pytest

from datagen import embed


@pytest.fixture(scope="session")
def static_model_dir():
    """The distilled static model, distilled once (~1.5-3 min on 2 cores) and cached in the user
    cache like a user's first run; every later test and session reuses the folder."""
    return embed.ensure_static_model()


def test_offline_hub_is_scoped_to_the_block(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with embed.offline_hub():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE is False

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(RuntimeError), embed.offline_hub():
        raise RuntimeError("a failed load still restores the setting")
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


@pytest.mark.slow
@pytest.mark.parametrize("before", [None, "0"])
def test_loading_bundled_model_leaves_hub_env_unchanged(monkeypatch, before):
    from huggingface_hub import constants

    monkeypatch.setattr(embed, "_MODELS", {})  # force a real load, not the per-process cache
    if before is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", before)
    hub_before = constants.HF_HUB_OFFLINE
    model = embed.load_model("minilm")
    assert os.environ.get("HF_HUB_OFFLINE") == before
    assert constants.HF_HUB_OFFLINE == hub_before
    assert model.device.type == embed.best_device()  # the GPU when there is one


def test_resolve_embedder_names():
    assert embed.resolve_embedder("minilm") == embed.default_model_path()
    assert embed.resolve_embedder("/some/folder") == "/some/folder"
    assert embed.resolve_embedder("org/model-id") == "org/model-id"


@pytest.mark.slow
def test_static_embedder_distilled_once_and_reused(static_model_dir):
    stamp = (static_model_dir / "config.json").stat().st_mtime_ns
    assert embed.ensure_static_model() == static_model_dir
    assert embed.resolve_embedder("static") == str(static_model_dir)
    assert embed.resolve_embedder(None) == str(static_model_dir)  # the default
    assert (static_model_dir / "config.json").stat().st_mtime_ns == stamp  # not distilled again

    texts = [
        "Write a short poem about the ocean.",
        "Please write a brief poem about the ocean.",
        "Convert 3.5 kilometres to miles.",
        "",
    ]
    vectors = embed.embed_texts(texts, model="static", progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (4, embed.STATIC_DIMS)
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embed.embed_texts([], model="static", progress=False).shape == (0, embed.STATIC_DIMS)
    assert type(embed.load_model("static")).__name__ == "StaticModel"


def test_any_saved_static_folder_loads_as_static(tmp_path, monkeypatch):
    """A model2vec folder the user made themselves is recognised and used as a static model."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embed.default_model_path() + "/tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    rng = np.random.default_rng(0)
    StaticModel(
        vectors=rng.standard_normal((vocab, 8)).astype(np.float32), tokenizer=tokenizer
    ).save_pretrained(tmp_path / "tiny")
    monkeypatch.setattr(embed, "_MODELS", {})
    vectors = embed.embed_texts(
        ["same words", "same words", "other text"], model=str(tmp_path / "tiny"), progress=False
    )
    assert vectors.shape == (3, 8)
    assert np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])
    assert type(embed.load_model(str(tmp_path / "tiny"))).__name__ == "StaticModel"
