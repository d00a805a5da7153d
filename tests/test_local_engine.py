"""The continuous batcher behind the `local` backend, against transformers' own `generate`.

Rows join a running batch whose cache is longer than their prompt, leave it as they end, and
the leftover padding is trimmed: any slip in positions, masks or cache surgery changes the
text. So greedy output must equal `generate` on each prompt alone (float32, where batch
make-up cannot flip an argmax), and a seeded sample must not depend on its batch company."""

from __future__ import annotations

import pytest

from datagen.llm.local_engine import REPETITION_PENALTY, ContinuousBatcher, Finished, Job
from datagen.llm.local_kv import DECODE_ATTENTION, use_grouped_decode_attention

pytestmark = pytest.mark.slow

PROMPTS = [
    "Name three fruits.",
    "Write a haiku about the sea, then explain each line of it in one sentence.",
    "What is 17 times 3?",
    "Give me a packing list for a weekend hiking trip in the mountains in autumn, as bullet points.",
    "Translate 'good morning' into French.",
    "Summarise why the sky is blue for a ten-year-old.",
    "List the planets of the solar system in order from the sun.",
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.embedded import embedded_model_dir

    torch.set_num_threads(1)  # other processes share this machine's two cores
    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert use_grouped_decode_attention(model)  # as LocalLLM loads it
    return model, tokenizer


def prompt_ids(tokenizer, text: str) -> list[int]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


def run(model, tokenizer, jobs: list[Job], max_batch: int) -> dict[tuple[int, int], Finished]:
    out: dict[tuple[int, int], Finished] = {}
    ContinuousBatcher(model, tokenizer, max_batch=max_batch).run(
        jobs, lambda job, sample, finished: out.__setitem__((job.index, sample), finished))
    return out


def test_greedy_equals_generate_on_each_prompt_alone(model_and_tokenizer):
    import torch

    model, tokenizer = model_and_tokenizer
    # Budgets differ so rows end at different steps; batch 3 < 7 prompts forces refills
    # into a running cache and trims after rows leave.
    jobs = [Job(i, prompt_ids(tokenizer, p), 1, 10 + 6 * (i % 3), 0.0, 1.0, (), None) for i, p in enumerate(PROMPTS)]
    ours = run(model, tokenizer, jobs, max_batch=3)
    assert set(ours) == {(job.index, 0) for job in jobs}
    model.set_attn_implementation("sdpa")  # the reference is transformers' own path throughout
    try:
        references = {}
        for job in jobs:
            ids = torch.tensor([job.prompt_ids])
            with torch.inference_mode():
                generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_tokens,
                                           do_sample=False, repetition_penalty=REPETITION_PENALTY,
                                           pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
            references[job.index] = generated
    finally:
        model.set_attn_implementation(DECODE_ATTENTION)
    for job in jobs:
        generated = references[job.index]
        reference = generated[:-1] if generated and generated[-1] == tokenizer.eos_token_id else generated
        assert ours[(job.index, 0)].tokens == reference, tokenizer.decode(job.prompt_ids)
        expected_reason = "length" if len(reference) == job.max_tokens else "stop"
        assert ours[(job.index, 0)].reason == expected_reason


def test_fused_llama_step_equals_transformers_own_step(model_and_tokenizer):
    # The fused decode step (local_kv.LlamaDecoder) against every step on the model's forward,
    # across refills and compactions; also checks the decoder really is in use for Llama.
    model, tokenizer = model_and_tokenizer
    jobs = [Job(i, prompt_ids(tokenizer, p), 1, 6 + 5 * (i % 3), 0.0, 1.0, (), None) for i, p in enumerate(PROMPTS[:5])]
    assert ContinuousBatcher(model, tokenizer).decoder is not None
    fused = run(model, tokenizer, jobs, max_batch=2)
    reference: dict[tuple[int, int], Finished] = {}
    ContinuousBatcher(model, tokenizer, max_batch=2, fused=False).run(
        jobs, lambda job, sample, finished: reference.__setitem__((job.index, sample), finished))
    assert {k: v.tokens for k, v in fused.items()} == {k: v.tokens for k, v in reference.items()}


def test_seeded_samples_do_not_depend_on_batch_company(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    target = Job(0, prompt_ids(tokenizer, "Invent a name for a cat."), 3, 12, 1.0, 0.9, (), 7)
    company = [Job(i, prompt_ids(tokenizer, p), 2, 8 + i, 0.8, 1.0, (), 100 + i) for i, p in enumerate(PROMPTS, 1)]
    alone = run(model, tokenizer, [target], max_batch=8)
    crowded = run(model, tokenizer, [*company, target], max_batch=4)
    texts = [alone[(0, k)].tokens for k in range(3)]
    assert texts == [crowded[(0, k)].tokens for k in range(3)]
    assert len({tuple(t) for t in texts}) > 1  # the three samples differ from each other
    other_seed = run(model, tokenizer, [Job(0, target.prompt_ids, 3, 12, 1.0, 0.9, (), 8)], max_batch=8)
    assert [other_seed[(0, k)].tokens for k in range(3)] != texts


def test_stop_string_and_end_token_end_a_row_early(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    free = run(model, tokenizer, [Job(0, prompt_ids(tokenizer, PROMPTS[3]), 1, 40, 0.0, 1.0, (), None)], 4)
    text = tokenizer.decode(free[(0, 0)].tokens)
    stop = text.split()[3]  # a word the model writes a few tokens in
    stopped = run(model, tokenizer, [Job(0, prompt_ids(tokenizer, PROMPTS[3]), 1, 40, 0.0, 1.0, (stop,), None)], 4)
    assert stopped[(0, 0)].reason == "stop"
    assert stop in tokenizer.decode(stopped[(0, 0)].tokens)
    assert len(stopped[(0, 0)].tokens) < len(free[(0, 0)].tokens)


def test_prefill_in_length_groups_gives_the_same_tokens_as_one_padded_pass(model_and_tokenizer):
    # Slack 0 prefills every distinct length on its own and merges the caches; a huge slack
    # pads all admitted prompts into one pass, as the engine did before the groups.
    model, tokenizer = model_and_tokenizer
    jobs = [Job(i, prompt_ids(tokenizer, p), 1, 8, 0.0, 1.0, (), None) for i, p in enumerate(PROMPTS)]
    outputs = []
    for slack in (0.0, 1e9):
        out: dict[tuple[int, int], Finished] = {}
        ContinuousBatcher(model, tokenizer, max_batch=8, prefill_slack=slack).run(
            jobs, lambda job, sample, finished, out=out: out.__setitem__((job.index, sample), finished))
        outputs.append({key: finished.tokens for key, finished in out.items()})
    assert len(outputs[0]) == len(PROMPTS) and outputs[0] == outputs[1]


def test_packed_bf16_decode_weights_give_bit_identical_logits():
    # `LlamaDecoder` holds bf16 weights in oneDNN's packed layout; the logits must equal the
    # plain `F.linear` path bit for bit, so packing can never change a token.
    import torch
    from transformers import AutoModelForCausalLM

    from datagen.embedded import embedded_model_dir
    from datagen.llm import local_kv

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.bfloat16).eval()
    packed = local_kv.LlamaDecoder(model, batch_hint=4)
    if not any(isinstance(w, local_kv.PackedWeight) for w in packed.layers[0]):
        pytest.skip("this torch build has no bf16 oneDNN linear")
    plain = local_kv.LlamaDecoder(model)
    plain.lm_head = model.get_output_embeddings().weight
    plain.layers = [tuple(w.packed_from if isinstance(w, local_kv.PackedWeight) else w for w in layer)
                    for layer in packed.layers]
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (4, 9), generator=generator)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, :3] = 0  # one left-padded row
    results = []
    for decoder in (packed, plain):
        cache, _ = local_kv.growing_cache(model.config)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
            step_mask = torch.cat([mask, mask.new_ones(4, 1)], dim=1)
            results.append(decoder.step(ids[:, -1], step_mask.sum(-1) - 1, cache, step_mask))
    assert torch.equal(results[0], results[1])


# ---------------------------------------------------------------- the pieces, without a model


def test_grouped_decode_attention_equals_sdpa_with_a_padding_mask():
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from datagen.llm.local_kv import grouped_decode_attention

    class Module:  # what transformers' attention functions read off the layer
        num_key_value_groups = 3
        is_causal = True

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(4, 9, 1, 16, generator=generator)
    key, value = torch.randn(2, 4, 3, 20, 16, generator=generator)
    mask = torch.ones(4, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., :7] = False  # left padding of one row
    mask[3, ..., :19] = False  # a row that sees only its newest token
    ours, _ = grouped_decode_attention(Module(), query, key, value, mask, scaling=0.25)
    stock, _ = sdpa_attention_forward(Module(), query, key, value, mask, scaling=0.25)
    assert ours.shape == stock.shape == (4, 1, 9, 16)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


def test_growing_layer_keeps_the_same_keys_as_dynamic_layer_past_its_spare_room():
    import torch
    from transformers.cache_utils import DynamicLayer

    from datagen.llm.local_kv import SPARE_COLUMNS, GrowingLayer

    generator = torch.Generator().manual_seed(1)
    ours, stock = GrowingLayer(), DynamicLayer()
    steps = [torch.randn(2, 3, 5, 8, generator=generator)] + [
        torch.randn(2, 3, 1, 8, generator=generator) for _ in range(SPARE_COLUMNS + 40)]
    for new in steps:  # prefill 5 columns, then one per step, past a re-allocation
        keys, values = ours.update(new, -new)
        stock_keys, stock_values = stock.update(new, -new)
        assert torch.equal(keys, stock_keys) and torch.equal(values, stock_values)
    assert ours.get_seq_length() == stock.get_seq_length() == 5 + SPARE_COLUMNS + 40
    ours.batch_select_indices(torch.tensor([1]))
    stock.batch_select_indices(torch.tensor([1]))
    assert torch.equal(ours.update(steps[-1][:1], steps[-1][:1])[0], stock.update(steps[-1][:1], steps[-1][:1])[0])


def test_nucleus_sampling_draws_in_proportion_within_the_nucleus_only():
    import torch

    from datagen.llm.local_engine import sample_nucleus

    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]] * 1000)
    uniforms = (torch.arange(1000) + 0.5) / 1000  # an even grid: counts follow the weights exactly
    counts = torch.bincount(sample_nucleus(torch, probs, torch.full((1000,), 0.9), uniforms), minlength=4)
    # Nucleus at 0.9: 0.5, 0.3, 0.15 (mass above the 0.05 token is 0.95 >= 0.9: it is out).
    assert counts[0] == 0
    assert [round(c / 1000, 2) for c in counts[1:].tolist()] == [round(0.5 / 0.95, 2), round(0.15 / 0.95, 2),
                                                                 round(0.3 / 0.95, 2)]
    whole = torch.bincount(sample_nucleus(torch, probs, torch.ones(1000), uniforms), minlength=4)
    assert whole.tolist() == [50, 500, 150, 300]  # top_p 1: the whole distribution


def test_nucleus_sampling_reaches_past_the_candidates_on_a_flat_row_and_never_picks_zero_mass():
    import torch

    from datagen.llm import local_engine
    from datagen.llm.local_engine import sample_nucleus

    vocab = 2000
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(vocab, generator=generator)
    flat = torch.empty(vocab)
    flat[order] = torch.linspace(1.2, 0.8, vocab)  # nearly flat, every probability distinct
    flat /= flat.sum()
    nucleus = set(order[: int((flat[order].cumsum(0) - flat[order] < 0.5).sum())].tolist())
    assert len(nucleus) > local_engine.NUCLEUS_CANDIDATES  # the fallback must be taken
    uniforms = (torch.arange(4000) + 0.5) / 4000
    picked = sample_nucleus(torch, flat.expand(4000, -1), torch.full((4000,), 0.5), uniforms).tolist()
    assert set(picked) <= nucleus and len(set(picked)) > local_engine.NUCLEUS_CANDIDATES
    sparse = torch.tensor([[0.0, 0.6, 0.0, 0.4, 0.0]] * 3)
    edges = torch.tensor([0.0, 0.5, 1.0 - 2**-24])  # the lowest draw, a middle one, the highest
    for top_p in (1.0, 0.99):
        assert sample_nucleus(torch, sparse, torch.full((3,), top_p), edges).tolist() == [1, 1, 3]
