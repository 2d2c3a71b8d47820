"""Cross-entropy of a vocabulary projection, computed in row chunks (as Liger's and torchtune's chunked losses).

`linear_cross_entropy(hidden, weight, targets)` is `F.cross_entropy((hidden @ weight.T).float(), targets)`
under the same autocast: logits from a matmul in the autocast dtype, log-softmax in float32, the logits'
gradient cast to the autocast dtype for its matmul, as autograd does (the 1/n of the mean is applied after that
matmul instead of before the cast, so gradients agree to bf16 rounding; in float32 they agree to 1e-6). It
computes the gradient w.r.t. `hidden` (and `weight`, if it trains) chunk by chunk in the forward, so the
[tokens, vocab] logits, their float32 copy, the log-softmax and their gradients never exist whole (for a 49k
vocabulary, 200 MB per 1,000 tokens, freshly allocated and page-faulted several times per step): three
[chunk, vocab] buffers serve all chunks. On a CPU the loss of 730 tokens (forward + backward) takes 179 ms
instead of 490 ms (experiments/train_throughput/step_ab.py).
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

CHUNK_ROWS = 128  # 128 x 49k float32 logits = 25 MB: the allocator reuses it from chunk to chunk


_casts = WeakIdKeyDictionary()  # frozen weight -> (its _version, dtype, the weight in dtype)


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, detached. A frozen weight (an LM head tied to the embedding, under LoRA) is cast once
    and reused while it is unchanged: a fresh cast is a page-faulted allocation of vocab x hidden every step."""
    if weight.dtype == dtype:
        return weight.detach()
    if weight.requires_grad:
        return weight.detach().to(dtype)
    cached = _casts.get(weight)
    if cached is None or cached[:2] != (weight._version, dtype):
        cached = _casts[weight] = (weight._version, dtype, weight.detach().to(dtype))
    return cached[2]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, matmul_weight: torch.Tensor,
                targets: torch.Tensor, chunk_rows: int, reduction: str) -> torch.Tensor:
        ctx.weight_dtype = weight.dtype
        n = targets.numel() if reduction == "mean" else 1  # the divisor: token count (mean) or 1 (sum)
        dtype = matmul_weight.dtype
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # three [chunk, vocab] buffers for all chunks: fresh 25 MB tensors per chunk are page-faulted every time
        rows = min(chunk_rows, targets.numel())
        logits_buf = hidden.new_empty((rows, weight.shape[0]), dtype=dtype)
        wide_buf = logits_buf if dtype == torch.float32 else torch.empty_like(logits_buf, dtype=torch.float32)
        logprobs_buf = torch.empty_like(logits_buf, dtype=torch.float32)
        for start in range(0, targets.numel(), chunk_rows):
            h = hidden[start:start + chunk_rows].to(dtype)
            t = targets[start:start + chunk_rows]
            rows = t.numel()
            logits = torch.mm(h, matmul_weight.T, out=logits_buf[:rows])
            wide = logits if wide_buf is logits_buf else wide_buf[:rows].copy_(logits)
            logprobs = torch.log_softmax(wide, dim=-1, out=logprobs_buf[:rows])
            total -= logprobs.gather(1, t[:, None]).sum()
            if grad_hidden is None and grad_weight is None:  # validation, no_grad: the loss only
                continue
            # d(loss)/d logits = softmax - onehot (float32), in the matmul dtype; the 1/n of the mean comes after
            probs = logprobs.exp_()
            probs[torch.arange(rows, device=t.device), t] -= 1.0
            grad_logits = logits_buf[:rows].copy_(probs)
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = (grad_logits @ matmul_weight).mul_(1.0 / n)
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float().mul_(1.0 / n)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = None if grad_hidden is None else grad_hidden * grad_out
        grad_weight = None if grad_weight is None else (grad_weight * grad_out).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int = CHUNK_ROWS, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits `hidden @ weight.T` (hidden [n, d], weight [vocab, d]) against `targets` [n],
    the mean over the n tokens or (`reduction="sum"`) their sum. Matmuls run in the autocast dtype when autocast
    is on, else in the weight's dtype."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    device = weight.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, cast_weight(weight, dtype), targets, chunk_rows, reduction)
