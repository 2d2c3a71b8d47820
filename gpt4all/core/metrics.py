"""Shared metrics: token counts, throughput, ground-truth perplexity. Every stage computes them here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from gpt4all.core.template import IGNORE_INDEX, encode_pair

PERPLEXITY_CLIP = 100.0


def count_label_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss (labels not IGNORE_INDEX), after the causal shift."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum().item())


def tokens_per_second(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def clipped_perplexity(mean_nll: float, clip: float = PERPLEXITY_CLIP) -> float:
    """exp(mean negative log-likelihood), clipped at `clip` as in the GPT4All report (Figure 2)."""
    if math.isnan(mean_nll):
        return clip
    return min(math.exp(min(mean_nll, 700.0)), clip)


def median(values: Sequence[float]) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def perplexities(nlls: Sequence[float], clip: float = PERPLEXITY_CLIP) -> list[float]:
    """Clipped perplexity of each mean NLL (nan, i.e. an empty response, counts as `clip`)."""
    return [clipped_perplexity(float(n), clip) for n in nlls]


def _mean_nll(logits: torch.Tensor, labels: Sequence[int]) -> float:
    """Mean NLL of the labelled tokens given `logits` [T, V] of the same T positions (causal shift inside)."""
    target = torch.as_tensor(list(labels)[1:], dtype=torch.long)
    pos = (target != IGNORE_INDEX).nonzero().squeeze(-1)
    if pos.numel() == 0:
        return float("nan")
    logprobs = torch.log_softmax(logits[pos].float(), dim=-1)
    return -logprobs.gather(1, target[pos, None]).mean().item()


def response_nll_hf(
    model: Any,
    tokenizer: Any,
    template: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 512,
    batch_size: int = 4,
    progress: bool = True,
) -> list[float]:
    """Mean NLL (nats) of each reference response given its prompt, with a HF causal LM; input order kept."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    encoded = [encode_pair(encode, template, p, r, max_length, add_suffix=False) for p, r in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [float("nan")] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(order), desc="nll (hf)", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(encoded[i][0]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(encoded[i][0])
                    ids[row, :n] = torch.tensor(encoded[i][0])
                    mask[row, :n] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.cpu()
                for row, i in enumerate(batch):
                    out[i] = _mean_nll(logits[row, : len(encoded[i][0])], encoded[i][1])
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return out


def response_nll_gguf(
    gguf_path: str | Path,
    template: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 512,
    n_threads: int = 1,
    n_ctx: int = 1024,
    progress: bool = True,
) -> list[float]:
    """Mean NLL (nats) of each reference response given its prompt, through llama.cpp; input order kept."""
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), logits_all=True, n_threads=n_threads, n_ctx=max(n_ctx, max_length), verbose=False)
    encode = lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)  # noqa: E731
    out = []
    try:
        for prompt, response in tqdm(pairs, desc="nll (gguf)", disable=not progress):
            ids, labels = encode_pair(encode, template, prompt, response, max_length, add_suffix=False)
            llm.reset()
            llm.eval(ids)
            out.append(_mean_nll(torch.from_numpy(llm.scores[: len(ids)].copy()), labels))
    finally:
        llm.close()
    return out
