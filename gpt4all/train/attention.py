"""Attention over packed rows: causal attention over each example's span instead of one masked SDPA over the row.

A packed row holds several examples, `position_ids` restarting at 0 for each. transformers then builds a
block-diagonal causal mask and runs SDPA over the whole row: its cost grows with row_length^2, and on a CPU
the masked kernel is slow. `packed_sdpa_attention` attends within each example's span only: the same attention
(no token sees another example), sum(example_length^2) work. On a CPU it computes each example as two batched
matmuls around a softmax in the dtype of the values (bfloat16 under bf16 autocast, as GPU attention kernels
compute in bf16-mixed training; float32 in 32-bit training). The query heads that share a key/value head go
into one matmul, so grouped-query attention copies no keys. One layer's attention on a packed SmolLM2 batch
(forward + backward) takes 9.5 ms instead of 23.4 ms with torch's CPU flash kernel per example, whose backward
dominated (experiments/train_throughput/step_ab.py). Examples longer than `MATH_MAX_LENGTH` tokens, attention
dropout and the features the matmul path does not implement go to the flash kernel per example, in float32.
Batches that are not packed (padded rows, generation with a cache) go to transformers' SDPA with its mask, unchanged. The saved
config is not affected (transformers does not write the attention implementation to config.json).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "sdpa_packed"
MATH_MAX_LENGTH = 1024  # the matmul path keeps heads x length^2 probabilities per layer for the backward
_UNSUPPORTED = ("softcap", "position_bias", "sliding_window", "s_aux")
_future_bias = torch.empty(0, 0)


def packed_spans(position_ids: torch.Tensor | None, q_len: int, kv_len: int) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) span of each example; None unless the batch is packed: every row starts at
    position 0, some row restarts later, and queries and keys are the same tokens (no cache)."""
    if position_ids is None or q_len != kv_len or position_ids.shape[-1] != q_len:
        return None
    starts = position_ids == 0
    if not bool(starts[:, 0].all()) or int(starts.sum()) <= starts.shape[0]:
        return None
    spans = []
    for row in starts.tolist():
        cuts = [i for i, first in enumerate(row) if first] + [q_len]
        spans.append(list(pairwise(cuts)))
    return spans


def causal_bias(length: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(groups * length, length): 0 on and below the diagonal, -inf above (keys after the query), repeated for the
    query heads of a group. Added inside the scores' matmul (`baddbmm`): on a CPU a bf16 `masked_fill_` of the
    scores cost as much as the matmul itself."""
    global _future_bias
    big = _future_bias
    if big.shape[0] < length or big.dtype != dtype or big.device != device:
        big = _future_bias = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)
    return big[:length, :length].repeat(groups, 1)


class _GroupedCausalAttention(torch.autograd.Function):
    """softmax(q k^T + causal bias) v with q (kv_heads, groups * L, dim) and k, v (kv_heads, L, dim). The backward
    is autograd's (the same softmax-backward kernel) from the saved probabilities: masked probabilities are 0, so
    the softmax backward gives their scores no gradient."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        length = key.shape[1]
        bias = causal_bias(length, query.shape[1] // length, query.dtype, query.device)
        scores = torch.baddbmm(bias, query, key.transpose(1, 2))
        probs = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(query, key, value, probs)
        return torch.bmm(probs, value)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        query, key, value, probs = ctx.saved_tensors
        grad_value = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_scores = torch._softmax_backward_data(torch.bmm(grad_out, value.transpose(1, 2)), probs, -1, probs.dtype)
        return torch.bmm(grad_scores, key), torch.bmm(grad_scores.transpose(1, 2), query), grad_value


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Causal attention of one example: query (heads, L, dim), already scaled; key and value (kv_heads, L, dim);
    one dtype. The query heads that share a key/value head (heads kv*groups ... kv*groups+groups-1, as
    transformers' repeat_kv) go into one matmul. Returns (L, heads, dim)."""
    kv_heads, length, dim = key.shape
    out = _GroupedCausalAttention.apply(query.reshape(kv_heads, -1, dim), key, value)
    return out.view(-1, length, dim).transpose(0, 1)


def _flash_per_example(module, query, key, value, spans, **kwargs) -> torch.Tensor:
    out_dtype = value.dtype  # under autocast q and k come out of the rotary embedding in float32, v in bf16
    query, key, value = query.float(), key.float(), value.float()
    rows = [torch.cat([sdpa_attention_forward(module, query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                              value[b:b + 1, :, s:e], None, is_causal=True, **kwargs)[0]
                       for s, e in row], dim=1) for b, row in enumerate(spans)]
    return torch.cat(rows, dim=0).to(out_dtype)


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An `AttentionInterface` function: causal attention per packed example, else transformers' SDPA."""
    spans = packed_spans(kwargs.get("position_ids"), query.shape[2], key.shape[2])
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}
    lengths = [[e - s for s, e in row] for row in spans]
    with torch.autocast(query.device.type, enabled=False):
        if kwargs.get("dropout") or any(kwargs.get(k) is not None for k in _UNSUPPORTED) \
                or max(max(row) for row in lengths) > MATH_MAX_LENGTH:
            return _flash_per_example(module, query, key, value, spans, **kwargs), None
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        dtype = value.dtype
        query, key = (query * scaling).to(dtype), key.to(dtype)
        rows = [torch.cat([causal_attention(q, k, v) for q, k, v in
                           zip(query[b].split(row, 1), key[b].split(row, 1), value[b].split(row, 1))])
                for b, row in enumerate(lengths)]
    return torch.stack(rows), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # batches that are not packed keep SDPA's own mask


def use_packed_attention(model: PreTrainedModel) -> bool:
    """Switch a model that attends with SDPA to `packed_sdpa_attention`; True if it was switched."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(PACKED_SDPA)
    return True
