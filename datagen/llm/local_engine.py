"""The `local` backend's decoding loop: continuous batching over a transformers KV cache.

Why not `model.generate`: it decodes a fixed batch until its longest row ends, so every
finished row keeps costing a full forward pass, and small fixed batches (needed to limit
padding) leave the CPU's matrix units half idle. On 2 cores SmolLM2-135M's matrix products
run ~2x faster per token at 32-64 rows than at 8. transformers' own continuous batching
(`generate_batch`) crashed under `inference_mode` and crawled under `no_grad` here. So this
loop, which is small:

- every sequence (one per sample: `n` samples of a prompt share one prefill) waits in a
  queue sorted by prompt length;
- up to `max_batch` run together. A row that ends is reported at once; its slot is freed
  when an eighth of the batch has ended (dropping rows copies the cache, so it is batched)
  and then the common left padding is trimmed. Once a quarter of the slots are free,
  waiting prompts are prefilled (left-padded, as one batch) and merged into the running
  cache;
- each row keeps its own sampling settings, stop strings, token budget and random
  generator (seeded from the request), so a request's output does not depend on which
  other requests it shared a batch with (up to floating-point summation order), and a run
  reproduces for the same seeds;
- the cache and the decode attention are `datagen.llm.local_kv`'s (no per-step copies); for
  a Llama-architecture model the decode step itself is `local_kv.LlamaDecoder` (fused
  projections, no module calls), prefill stays with transformers;
- the repetition penalty is a gather/scatter over each row's seen token ids, as
  transformers applies it, not a pass over the whole vocabulary per rule.

Only full-attention caches are merged; a model with any other cache layer (sliding windows,
hybrid models) runs one wave at a time, as `generate` would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datagen.llm import local_kv

STOP_WINDOW = 24  # tokens decoded per step to look for a stop string; longer than any stop
REPETITION_PENALTY = 1.1  # SmolLM2-135M loops without it at temperature 0
DEAD_SHARE = 8  # drop ended rows once 1/8 of the batch has ended
REFILL_SHARE = 4  # admit waiting prompts once 1/4 of the slots are free
PREFILL_SLACK = 0.15  # a prefill pass may be at most 15 % padding (beyond one prompt)

OnSequence = Callable[["Job", int, "Finished"], None]


@dataclass
class Job:
    """One prompt to answer: `samples` sequences (1 for greedy, whose samples would be equal)."""

    index: int
    prompt_ids: list[int]
    samples: int
    max_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    seed: int | None


@dataclass
class Finished:
    """One sequence's outcome: its new tokens (without the end token) and why it stopped."""

    tokens: list[int]
    reason: str  # "stop" (end token or stop string) or "length"


@dataclass
class _Row:
    job: Job
    sample: int
    generator: Any
    tokens: list[int] = field(default_factory=list)
    position: int = 0  # real tokens in the cache (prompt + fed tokens): the next fed token's position
    ended: bool = False  # reported; still in the batch until the next compaction


@dataclass
class _Batch:
    """Rows decoding together, with their KV cache, attention mask (0 = left padding), seen
    token ids for the repetition penalty ([rows, n], repeats allowed: a narrower row is padded
    with its own first id), and each row's newest unfed token."""

    rows: list[_Row]
    cache: Any
    mask: Any
    seen: Any
    next_tokens: Any
    growing: bool  # a `local_kv` cache: rows can be merged and padding trimmed

    @property
    def live(self) -> int:
        return sum(not row.ended for row in self.rows)

    def advance(self, batcher: ContinuousBatcher, on_sequence: OnSequence) -> _Batch | None:
        """Record each live row's new token and report the rows that end; compact the batch
        once enough have ended. None when no row goes on."""
        import torch

        self.seen = torch.cat([self.seen, self.next_tokens.unsqueeze(1)], dim=1)
        for row, token in zip(self.rows, self.next_tokens.tolist(), strict=True):
            if row.ended:
                continue
            if token in batcher.eos_ids:
                row.ended = True
                on_sequence(row.job, row.sample, Finished(row.tokens, "stop"))
                continue
            row.tokens.append(token)
            if row.job.stops and batcher.hit_stop(row):
                row.ended = True
                on_sequence(row.job, row.sample, Finished(row.tokens, "stop"))
            elif len(row.tokens) >= row.job.max_tokens:
                row.ended = True
                on_sequence(row.job, row.sample, Finished(row.tokens, "length"))
        live = self.live
        if live == 0:
            return None
        if len(self.rows) - live >= max(1, len(self.rows) // DEAD_SHARE):
            self.compact()
        return self

    def compact(self) -> None:
        """Drop the ended rows from the batch and its cache."""
        import torch

        keep = [i for i, row in enumerate(self.rows) if not row.ended]
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, device=self.seen.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = local_kv.keep_rows(self.cache, self.mask, index, trim=self.growing)
        self.seen, self.next_tokens = self.seen[index], self.next_tokens[index]

    def absorb(self, other: _Batch) -> None:
        """Take another batch's rows into this one (the shorter cache left-padded)."""
        import torch

        self.compact()
        self.mask = local_kv.merge_caches(self.cache, self.mask, other.cache, other.mask)
        self.rows.extend(other.rows)
        self.seen = _stack_seen(self.seen, other.seen)
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])


class ContinuousBatcher:
    """Decodes many jobs over one model with a running batch that is refilled as rows end."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 32, fused: bool = True,
                 prefill_slack: float = PREFILL_SLACK):
        """`fused=False` keeps every step on transformers' own forward (the reference path);
        `prefill_slack` is the share of padding a prefill pass may carry (see `prefill_groups`)."""
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max(1, max_batch)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.eos_ids = {int(e) for e in eos_ids if e is not None}
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.device = next(model.parameters()).device
        self.torch = torch
        self.decoder = local_kv.llama_decoder(model, self.max_batch) if fused else None
        self.steps = 0  # decode steps run (one token for every row of the batch each)
        self._merge_ok: bool | None = None
        self.prefill_slack = prefill_slack

    def run(self, jobs: Sequence[Job], on_sequence: OnSequence) -> None:
        """Decode every job's samples; `on_sequence(job, sample, finished)` as each one ends.

        Invariant between steps: `next_tokens[i]` is row i's newest token, already recorded
        in `rows[i].tokens` and checked for an ending, not yet fed to the model."""
        waiting: list[_Row] = []
        for job in sorted(jobs, key=lambda j: (len(j.prompt_ids), j.index)):
            for sample in range(job.samples):
                waiting.append(_Row(job, sample, self._generator(job, sample)))
        waiting.reverse()  # pop() from the end takes the shortest prompt first
        running: _Batch | None = None
        with self.torch.inference_mode():
            while waiting or running:
                free = self.max_batch - (running.live if running else 0)
                refill = running is None or (running.growing and free >= max(1, self.max_batch // REFILL_SHARE))
                if waiting and refill:
                    admitted = self._prefill([waiting.pop() for _ in range(min(free, len(waiting)))], on_sequence)
                    if running is None:
                        running = admitted
                    elif admitted is not None:
                        running.absorb(admitted)
                elif running is not None:
                    running = self._decode_step(running, on_sequence)

    # ------------------------------------------------------------------ the model calls

    def _prefill(self, admitted: list[_Row], on_sequence: OnSequence) -> _Batch | None:
        """Forward passes over the admitted prompts (a prompt shared by several samples is
        computed once and its cache rows repeated); returns the rows that go on after their
        first token, as a batch of their own.

        Prompts arrive sorted by length; they are prefilled in groups of similar length
        (`prefill_groups`) and the groups' caches merged, so a long prompt does not pad every
        short one to its length: with one left-padded pass, padding was over half the prefill
        work of the 128-prompt bench."""
        torch = self.torch
        unique: dict[int, list[int]] = {}
        for row in admitted:
            unique.setdefault(row.job.index, row.job.prompt_ids)
        prompts = list(unique.values())
        cache = mask = seen = logits = None
        growing = True
        groups = prefill_groups([len(p) for p in prompts], self.prefill_slack) if self._can_merge() else [range(len(prompts))]
        for group in groups:
            part = self._prefill_pass([prompts[i] for i in group])
            if cache is None:
                cache, mask, seen, logits, growing = part
                continue
            mask = local_kv.merge_caches(cache, mask, part[0], part[1])
            seen = _stack_seen(seen, part[2])
            logits = torch.cat([logits, part[3]])
        slot = {job_index: k for k, job_index in enumerate(unique)}
        order = [slot[row.job.index] for row in admitted]
        if order != list(range(len(unique))):
            index = torch.tensor(order, device=self.device)
            mask = local_kv.keep_rows(cache, mask, index, trim=False)
            seen, logits = seen[index], logits[index]
        for row in admitted:
            row.position = len(row.job.prompt_ids)
        batch = _Batch(admitted, cache, mask, seen, self._choose(admitted, logits, seen), growing)
        return batch.advance(self, on_sequence)

    def _can_merge(self) -> bool:
        """Whether this model's caches are `local_kv` growing caches (full attention only)."""
        if self._merge_ok is None:
            self._merge_ok = local_kv.growing_cache(self.model.config)[1]
        return self._merge_ok

    def _prefill_pass(self, prompts: list[list[int]]) -> tuple[Any, Any, Any, Any, bool]:
        """One left-padded forward pass: the cache, mask (0 = padding), seen ids and the last
        position's float32 logits of `prompts`, and whether the cache can be merged."""
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for slot, prompt in enumerate(prompts):
            ids[slot, width - len(prompt):] = torch.tensor(prompt)
            mask[slot, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, growing = local_kv.growing_cache(self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        # Every prompt token counts as seen (as in transformers' repetition penalty); padding
        # columns repeat the row's last real token, so they mark nothing new.
        seen = torch.where(mask.bool(), ids, ids[:, -1:])
        return cache, mask, seen, out.logits[:, -1, :].float(), growing

    def _decode_step(self, batch: _Batch, on_sequence: OnSequence) -> _Batch | None:
        torch = self.torch
        self.steps += 1
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        positions = torch.tensor([row.position for row in batch.rows], device=self.device)
        if self.decoder is not None and batch.growing:
            logits = self.decoder.step(batch.next_tokens, positions, batch.cache, batch.mask)
        else:
            out = self.model(input_ids=batch.next_tokens.unsqueeze(1), attention_mask=batch.mask,
                             position_ids=positions.unsqueeze(1), past_key_values=batch.cache, use_cache=True)
            logits = out.logits[:, -1, :].float()
        for row in batch.rows:
            row.position += 1
        batch.next_tokens = self._choose(batch.rows, logits, batch.seen)
        return batch.advance(self, on_sequence)

    # ------------------------------------------------------------------ choosing tokens

    def _choose(self, rows: list[_Row], logits: Any, seen: Any) -> Any:
        """Next token per row: repetition penalty (on `logits` in place), then argmax
        (temperature 0) or a draw from the row's own generator after temperature and top-p."""
        torch = self.torch
        scores = logits.gather(1, seen)
        logits.scatter_(1, seen, torch.where(scores > 0, scores / REPETITION_PENALTY, scores * REPETITION_PENALTY))
        chosen = logits.argmax(dim=-1)
        sampled = [i for i, row in enumerate(rows) if row.job.temperature > 0 and not row.ended]
        if sampled:
            index = torch.tensor(sampled, device=self.device)
            temperatures = torch.tensor([rows[i].job.temperature for i in sampled], device=self.device)
            probs = torch.softmax(logits[index] / temperatures.unsqueeze(1), dim=-1)
            top_ps = torch.tensor([rows[i].job.top_p for i in sampled], device=self.device)
            # One uniform draw per row from the row's own generator: the token is the draw's
            # place in the row's (filtered) distribution, so it depends on nothing else in the batch.
            uniforms = torch.stack([torch.rand((), generator=rows[i].generator) for i in sampled]).to(self.device)
            chosen[index] = sample_nucleus(torch, probs, top_ps, uniforms)
        return chosen

    def hit_stop(self, row: _Row) -> bool:
        tail = self.tokenizer.decode(row.tokens[-STOP_WINDOW:], skip_special_tokens=True)
        return any(stop in tail for stop in row.job.stops)

    def _generator(self, job: Job, sample: int) -> Any:
        if job.temperature <= 0:
            return None
        generator = self.torch.Generator(device=self.device)
        if job.seed is None:
            generator.seed()
        else:  # sample k > 0 gets seed + 1000 + k, as the OpenAI client's fan-out does
            generator.manual_seed(job.seed if sample == 0 else job.seed + 1000 + sample)
        return generator


def prefill_groups(lengths: Sequence[int], slack: float = PREFILL_SLACK) -> list[range]:
    """Split prompts sorted by length into runs that each pad to their longest with at most
    `slack` of their tokens as padding; a run's share of padding only grows as it extends, so
    a run ends at the first prompt that would push it over."""
    groups: list[range] = []
    start, real = 0, 0
    for i, length in enumerate(lengths):
        if i > start and length * (i + 1 - start) > (1 + slack) * (real + length):
            groups.append(range(start, i))
            start, real = i, 0
        real += length
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def _stack_seen(top: Any, bottom: Any) -> Any:
    """One seen-ids table from two of different widths: the narrower one's rows are widened
    by repeating their first id (a repeated id changes no penalty)."""
    import torch

    width = max(top.shape[1], bottom.shape[1])

    def widen(ids: Any) -> Any:
        missing = width - ids.shape[1]
        return ids if missing <= 0 else torch.cat([ids[:, :1].expand(-1, missing), ids], dim=1)

    return torch.cat([widen(top), widen(bottom)])


NUCLEUS_CANDIDATES = 256  # most likely tokens looked at first; a flatter row falls back to a full sort


def sample_nucleus(torch: Any, probs: Any, top_ps: Any, uniforms: Any) -> Any:
    """Per row, the token at `uniforms` (in [0, 1)) of the way through the row's top-p
    nucleus (its smallest set of most likely tokens whose mass reaches top_p, in descending
    order), or through the whole distribution where top_p >= 1.

    Why not a full sort plus `torch.multinomial` per row (the sampler before this one):
    sorting 64 rows of a 49k vocabulary and 64 multinomial calls took 230 ms a step on 2 cores, against ~125 ms for
    the model's own step. The nucleus almost always lies within the few hundred most likely
    tokens, so `topk` finds it exactly (checked per row: the candidates' mass reaches top_p);
    rows where it does not are sorted in full."""
    chosen = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    whole = top_ps >= 1.0
    if bool(whole.any()):
        rows = whole.nonzero().squeeze(1)
        chosen[rows] = _inverse_cdf(torch, probs[rows], uniforms[rows])
    if bool(whole.all()):
        return chosen
    rows = (~whole).nonzero().squeeze(1)
    values, tokens = probs[rows].topk(min(NUCLEUS_CANDIDATES, probs.shape[1]), dim=-1)
    found = values.sum(dim=-1) >= top_ps[rows]
    if not bool(found.all()):  # a flat distribution: the nucleus reaches past the candidates
        flat = (~found).nonzero().squeeze(1)
        values_flat, tokens_flat = probs[rows[flat]].sort(dim=-1, descending=True)
        chosen[rows[flat]] = _pick_in_nucleus(torch, values_flat, tokens_flat, top_ps[rows[flat]], uniforms[rows[flat]])
        keep = found.nonzero().squeeze(1)
        rows, values, tokens = rows[keep], values[keep], tokens[keep]
    if len(rows):
        chosen[rows] = _pick_in_nucleus(torch, values, tokens, top_ps[rows], uniforms[rows])
    return chosen


def _pick_in_nucleus(torch: Any, values: Any, tokens: Any, top_ps: Any, uniforms: Any) -> Any:
    """`values` sorted descending with their `tokens`: keep each row's tokens whose mass
    ranked above is below its top_p, then take the one at `uniforms` of the kept mass."""
    before = values.cumsum(dim=-1) - values
    kept = values.masked_fill(before >= top_ps.unsqueeze(1), 0.0)
    return tokens.gather(1, _inverse_cdf(torch, kept, uniforms).unsqueeze(1)).squeeze(1)


def _inverse_cdf(torch: Any, weights: Any, uniforms: Any) -> Any:
    """Per row, the first position whose running sum of `weights` passes `uniforms` of the
    row's total: a draw in proportion to the weights (never a zero-weight position)."""
    cdf = weights.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, target, right=True).squeeze(1)
    last_positive = (weights > 0).cumsum(dim=-1).argmax(dim=-1)  # a draw rounded up to the total
    return torch.minimum(picked, last_positive)
