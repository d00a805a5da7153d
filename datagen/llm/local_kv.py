"""What transformers lacks for decoding many rows at once on a CPU (used by `local_engine`).

Profiled on 2 cores with SmolLM2-135M at 64 rows, the stock path spends two thirds of each
decode step outside the model's matrix products:
- `DynamicLayer.update` concatenates the whole cache with the new token's keys every step
  (a full copy per layer per token: 34 % of the step);
- SDPA with a padding mask cannot use its grouped-query path, so it first copies the 3 KV
  heads out to all 9 query heads (`repeat_kv`), then runs a flash kernel that is slow for a
  single query (together 65 % of the step).

`GrowingLayer` keeps keys and values in a buffer with spare room along the sequence, so a
step writes one column; `grouped_decode_attention` answers a one-token query per KV head
group with two batched matmuls, without copying the cache. Prefill still goes through SDPA.
Measured with one thread at 32 rows: 329 ms/step with the stock path, 153 ms with the
grouped attention alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

DECODE_ATTENTION = "datagen_grouped_decode"
SPARE_COLUMNS = 32  # room kept along the sequence: a re-allocation every 32 steps at most


def grouped_decode_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
    scaling: float | None = None, **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function signature: query [B, H, Q, D], key/value [B, KVH, T, D],
    mask bool [B, 1, Q, T] (True = attend) or None; returns [B, Q, H, D]. Only the one-token
    decode step is handled here; everything else (prefill, dropout, soft-capping, sinks,
    sliding windows) is SDPA's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    special = any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "sliding_window"))
    if query.shape[2] != 1 or dropout or special or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    groups = key.shape[1]
    grouped = query.reshape(batch, groups, heads // groups, dim)  # head h = group * (heads/groups) + r
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float()
    scores = scores * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, 1, heads, dim), None


def use_grouped_decode_attention(model: Any) -> bool:
    """Switch `model` to `grouped_decode_attention` (registered once with transformers, with
    SDPA's mask builder); False, and the model untouched, where it cannot take it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(DECODE_ATTENTION)
    except (ValueError, NotImplementedError, AttributeError):  # an older-style attention module
        return False
    return True


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values sit at the front of a larger buffer.
    The spare columns are zeros, so `LlamaDecoder` can attend over the whole buffer (the spare
    masked out) and keep its matmuls on contiguous tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        self._keys: Any = None
        self._values: Any = None

    @property
    def keys(self) -> Any:
        return None if self._keys is None else self._keys[:, :, : self.length]

    @keys.setter
    def keys(self, tensor: Any) -> None:  # the base class assigns whole tensors
        self._keys = tensor
        self.length = tensor.shape[-2] if tensor is not None and tensor.dim() == 4 else 0

    @property
    def values(self) -> Any:
        return None if self._values is None else self._values[:, :, : self.length]

    @values.setter
    def values(self, tensor: Any) -> None:
        self._values = tensor

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._keys is None or self._keys.dim() != 4:
            self.replace(key_states, value_states)
        else:
            if self.length + new > self._keys.shape[-2]:
                self.replace(self.keys, self.values, extra=new)
            end = self.length + new
            self._keys[:, :, self.length : end] = key_states
            self._values[:, :, self.length : end] = value_states
            self.length = end
        return self.keys, self.values

    def replace(self, keys: Any, values: Any, extra: int = 0) -> None:
        """Hold exactly `keys`/`values` (copied into a fresh buffer with spare room)."""
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_zeros((batch, heads, length + extra + SPARE_COLUMNS, dim))
        self._values = values.new_zeros((batch, heads, length + extra + SPARE_COLUMNS, values.shape[-1]))
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.length = length

    def batch_select_indices(self, indices: Any) -> None:
        if self.length:
            self.replace(self.keys[indices], self.values[indices])


def growing_cache(config: Any) -> tuple[DynamicCache, bool]:
    """A cache for `config`, and whether it is made of `GrowingLayer`s only (full attention):
    only then can rows of different lengths be merged, dropped and trimmed freely."""
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
        return cache, True
    return cache, False


def left_pad(tensor: Any, length: int, dim: int) -> Any:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def merge_caches(cache: DynamicCache, mask: Any, other: DynamicCache, other_mask: Any) -> Any:
    """Stack `other`'s rows under `cache`'s, left-padding the shorter (padding is masked out,
    and rotary positions travel inside the keys, so nothing shifts); returns the new mask."""
    length = max(mask.shape[1], other_mask.shape[1])
    for layer, new_layer in zip(cache.layers, other.layers, strict=True):
        layer.replace(torch.cat([left_pad(layer.keys, length, 2), left_pad(new_layer.keys, length, 2)]),
                      torch.cat([left_pad(layer.values, length, 2), left_pad(new_layer.values, length, 2)]))
    return torch.cat([left_pad(mask, length, 1), left_pad(other_mask, length, 1)])


def keep_rows(cache: DynamicCache, mask: Any, index: Any, trim: bool) -> Any:
    """Keep only rows `index` (one copy of the cache) and, with `trim`, drop the leading
    columns that are padding in every kept row (left behind by rows that ended); returns the
    new mask."""
    mask = mask[index]
    start = 0
    if trim:
        in_use = mask.any(dim=0).nonzero()
        start = int(in_use[0]) if len(in_use) else 0
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.replace(layer.keys[index, :, start:], layer.values[index, :, start:])
        else:
            layer.batch_select_indices(index)
    return mask[:, start:]


class LlamaDecoder:
    """The one-token decode step of a Llama-architecture model in plain tensor ops, over a
    cache of `GrowingLayer`s; prefill stays with transformers.

    Why: at 32-64 rows the stock decoder layer spends more time around its matrix products than
    in them (module calls, seven separate projections, a copy of every layer's keys and values
    per step because the attention reads a slice of the buffer). Here q/k/v and gate/up are
    each one matmul (the model's own parameters become views of the fused weights, so nothing
    is stored twice), rotary embedding is applied to q and k at once, and attention reads the
    whole buffer (spare columns zero and masked), which bf16 `bmm` takes without a copy.
    Numerics follow transformers' Llama in the model's dtype: float32 norms and softmax, bf16
    residuals; in float32 the tokens equal `generate`'s (tests/test_local_engine.py)."""

    def __init__(self, model: Any, batch_hint: int = 64):
        inner = model.model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.rotary = inner.rotary_emb
        pack = _packer(self.embed, batch_hint)
        self.lm_head = pack(model.get_output_embeddings().weight)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
            self.intermediate = gate_up.shape[0] // 2
            self.layers.append((layer.input_layernorm.weight, pack(qkv), pack(attn.o_proj.weight),
                                layer.post_attention_layernorm.weight, pack(gate_up), pack(mlp.down_proj.weight)))

    @staticmethod
    def supports(model: Any) -> bool:
        """Only the plain Llama block: no biases, SiLU gate, full attention, nothing extra."""
        config = getattr(model, "config", None)
        if config is None or getattr(config, "model_type", None) != "llama":
            return False
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            return False
        if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
            return False
        inner = getattr(model, "model", None)
        return inner is not None and all(hasattr(inner, name) for name in ("embed_tokens", "norm", "rotary_emb"))

    def _rms(self, x: Any, weight: Any) -> Any:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x.to(dtype)

    def step(self, tokens: Any, positions: Any, cache: DynamicCache, mask: Any) -> Any:
        """Feed one token per row (`tokens`, `positions`: [B]); `mask` [B, L+1] marks the real
        columns (0 = left padding) once this token is in. Returns float32 logits [B, vocab]."""
        import torch.nn.functional as F

        linear = _linear
        batch = tokens.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        groups = heads // kv_heads
        q_width, kv_width = heads * dim, kv_heads * dim
        layers = cache.layers
        first = layers[0]
        if first.length + 1 > first._keys.shape[2]:
            for layer in layers:
                layer.replace(layer.keys, layer.values, extra=1)
        column, capacity = first.length, first._keys.shape[2]
        # Additive mask over the whole buffer: left padding and the unwritten spare are -inf.
        bias = torch.full((batch, 1, capacity), float("-inf"), dtype=torch.float32, device=tokens.device)
        bias[:, 0, : column + 1].masked_fill_(mask.bool(), 0.0)
        x = F.embedding(tokens, self.embed)
        cos, sin = self.rotary(x, positions.unsqueeze(1))  # [B, 1, dim]
        half = dim // 2
        for layer, (ln1, qkv_w, o_w, ln2, gate_up_w, down_w) in zip(layers, self.layers, strict=True):
            qkv = linear(self._rms(x, ln1), qkv_w)
            qk = qkv[:, : q_width + kv_width].view(batch, heads + kv_heads, dim)
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
            keys, values = layer._keys, layer._values
            keys[:, :, column] = qk[:, heads:]
            values[:, :, column] = qkv[:, q_width + kv_width :].view(batch, kv_heads, dim)
            query = qk[:, :heads].reshape(batch * kv_heads, groups, dim)  # head h = group * groups + r
            scores = torch.bmm(query, keys.view(batch * kv_heads, capacity, dim).transpose(1, 2))
            scores = scores.view(batch, heads, capacity).float().mul_(self.scale).add_(bias)
            weights = torch.softmax(scores, dim=-1).to(values.dtype).view(batch * kv_heads, groups, capacity)
            attended = torch.bmm(weights, values.view(batch * kv_heads, capacity, dim)).view(batch, q_width)
            x = x + linear(attended, o_w)
            gate_up = linear(self._rms(x, ln2), gate_up_w)
            x = x + linear(F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :], down_w)
        for layer in layers:
            layer.length = column + 1
        return linear(self._rms(x, self.norm), self.lm_head).float()


class PackedWeight:
    """A bf16 weight in oneDNN's blocked layout for `linear`. Why: `F.linear` on a plain bf16
    weight lets oneDNN re-block the weight inside every call; at decode sizes (tens of rows)
    that costs about a fifth of each matrix product on this machine (bench/local_engine.py).
    The packed copy is a second copy of the decode weights; results are bit-identical."""

    def __init__(self, weight: Any, batch_hint: int):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.packed_from = weight  # the model's own tensor (shared, not a copy)


def _linear(x: Any, weight: Any) -> Any:
    if isinstance(weight, PackedWeight):
        return torch.ops.mkldnn._linear_pointwise(x, weight.packed, None, "none", [], "")
    return torch.nn.functional.linear(x, weight)


def _packer(reference: Any, batch_hint: int) -> Any:
    """How to hold decode weights like `reference`: packed for oneDNN when the weights are bf16
    on a CPU whose oneDNN takes bf16 (checked once: the packed product must equal `F.linear`'s
    bit for bit), else as they are (float32 keeps `F.linear`, so tokens equal `generate`'s)."""
    usable = (reference.device.type == "cpu" and reference.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    if usable:
        try:
            probe_w = torch.linspace(-1, 1, 64 * 32).reshape(64, 32).to(torch.bfloat16)
            probe_x = torch.linspace(-2, 2, 4 * 32).reshape(4, 32).to(torch.bfloat16)
            usable = torch.equal(_linear(probe_x, PackedWeight(probe_w, batch_hint)),
                                 torch.nn.functional.linear(probe_x, probe_w))
        except RuntimeError:  # a build without bf16 oneDNN kernels
            usable = False
    return (lambda weight: PackedWeight(weight, batch_hint)) if usable else (lambda weight: weight)


def _fuse(projections: list[Any]) -> Any:
    """One weight for several bias-free projections of the same input; each module's own
    weight becomes a view of it (its forward is unchanged, and nothing is stored twice)."""
    fused = torch.cat([p.weight.detach() for p in projections]).contiguous()
    start = 0
    for p in projections:
        rows = p.weight.shape[0]
        p.weight = torch.nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused


def llama_decoder(model: Any, batch_hint: int = 64) -> LlamaDecoder | None:
    """The model's `LlamaDecoder` (built once and kept on the model), or None when the model is
    not a plain Llama."""
    decoder = getattr(model, "_datagen_llama_decoder", None)
    if decoder is None and LlamaDecoder.supports(model):
        decoder = LlamaDecoder(model, batch_hint)
        model._datagen_llama_decoder = decoder
    return decoder
