"""Shared metrics: token counts, throughput, ground-truth perplexity (two scoring methods) and the statistics
that compare models. Every stage and benchmark computes them here.

Scoring works on token sequences with labels (IGNORE_INDEX where a token is context, not scored): a backend
(HF model or llama.cpp, see gpt4all.core.lm) returns the summed NLL and the count of scored tokens per sequence,
and a scoring method turns those into one NLL per example, whose exp is the example's perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gpt4all.core.template import IGNORE_INDEX, encode_pair

PERPLEXITY_CLIP = 100.0
GPT4ALL_2023_STRIDE = 512
METHODS = ("conditional", "gpt4all_2023")

Encode = Callable[[str], Sequence[int]]


def count_label_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss (labels not IGNORE_INDEX), after the causal shift."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum().item())


def tokens_per_second(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def clipped_perplexity(mean_nll: float, clip: float = PERPLEXITY_CLIP, nan_value: float | None = None) -> float:
    """exp(mean NLL), clipped at `clip` as in the GPT4All report; a NaN NLL gives `nan_value` (default: clip)."""
    if math.isnan(mean_nll):
        return clip if nan_value is None else nan_value
    return min(math.exp(min(mean_nll, 700.0)), clip)


def median(values: Sequence[float]) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def perplexities(nlls: Sequence[float], clip: float = PERPLEXITY_CLIP, nan_value: float | None = None) -> list[float]:
    """Clipped perplexity of each mean NLL (NaN, e.g. an empty response, counts as `nan_value`, default clip)."""
    return [clipped_perplexity(float(n), clip, nan_value) for n in nlls]


# ---------------------------------------------------------------- token sequences -> summed NLL (HF backend)

def _sum_nll(logits: torch.Tensor, labels: Sequence[int]) -> tuple[float, int]:
    """Summed NLL and count of the labelled tokens, given `logits` [T, V] of the same T positions (shift inside)."""
    target = torch.as_tensor(list(labels)[1:], dtype=torch.long)
    pos = (target != IGNORE_INDEX).nonzero().squeeze(-1)
    if pos.numel() == 0:
        return 0.0, 0
    logprobs = torch.log_softmax(logits[pos].double(), dim=-1)
    return -logprobs.gather(1, target[pos, None]).sum().item(), int(pos.numel())


def _body_and_head(model: Any) -> tuple[Any, Any] | None:
    """The decoder stack and the output head of a HF causal LM (through a PEFT wrapper), if it exposes them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return (body, head) if body is not None and head is not None and base is not None else None


def sequence_nll_hf(
    model: Any, seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int = 0,
    batch_size: int = 4, progress: bool = True,
) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per sequence with a HF causal LM; input order kept.

    Batches hold sequences of similar length (longest first), right-padded and run without an attention mask:
    causal attention never lets a real position see the pads, so padding never changes a score. The output head and log-softmax run only on the positions that predict a scored
    token (the prompt's positions are skipped), which on a 49k vocabulary is a large share of the work.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    device = next(model.parameters()).device
    split = _body_and_head(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(order), desc="nll (hf)", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start: start + batch_size]
                width = max(len(seqs[i]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                target = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(seqs[i])
                    ids[row, :n] = torch.as_tensor(list(seqs[i]))
                    target[row, : n - 1] = torch.as_tensor(list(labels[i])[1:n], dtype=torch.long)
                rows, cols = (target != IGNORE_INDEX).nonzero(as_tuple=True)
                # right padding and causal attention: no real position ever sees a pad, so no attention mask
                # (with one, SDPA leaves its causal fast path; lm-eval passes none either)
                if split is None:
                    logits = model(input_ids=ids.to(device), use_cache=False).logits[rows, cols]
                else:
                    hidden = split[0](input_ids=ids.to(device), use_cache=False).last_hidden_state
                    logits = split[1](hidden[rows.to(device), cols.to(device)])
                logprobs = torch.log_softmax(logits.cpu().double(), dim=-1)
                tok_nll = -logprobs.gather(1, target[rows, cols][:, None]).squeeze(1)
                sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, tok_nll)
                counts = torch.bincount(rows, minlength=len(batch))
                for row, i in enumerate(batch):
                    out[i] = (float(sums[row]), int(counts[row]))
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return out


def sequence_nll_llama(llm: Any, seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                       progress: bool = True) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per sequence with a llama_cpp.Llama created with logits_all=True."""
    out = []
    for ids, lab in tqdm(list(zip(seqs, labels)), desc="nll (gguf)", disable=not progress):
        llm.reset()
        llm.eval(list(ids))
        out.append(_sum_nll(torch.from_numpy(llm.scores[: len(ids)].copy()), lab))
    return out


# ---------------------------------------------------------------- scoring methods: examples -> token sequences

@dataclass
class Scored:
    """The sequences a method sends to a backend, and how to fold their results back into one NLL per example."""
    seqs: list[list[int]]
    labels: list[list[int]]
    fold: Callable[[list[tuple[float, int]]], list[float]]


def conditional_sequences(encode: Encode, template: Any, pairs: Sequence[tuple[str, str]],
                          max_length: int = 512) -> Scored:
    """`conditional`: the response's tokens scored with the templated instruction as context; NLL = mean over
    the response tokens (NaN for an empty response). `encode` adds no special tokens."""
    enc = [encode_pair(encode, template, p, r, max_length, add_suffix=False) for p, r in pairs]

    def fold(res: list[tuple[float, int]]) -> list[float]:
        return [s / n if n else float("nan") for s, n in res]

    return Scored([e[0] for e in enc], [e[1] for e in enc], fold)


def instruction_prompt(instruction: str, inp: str | None) -> str:
    """The user turn of an instruction with an optional input (what `conditional` puts in the template)."""
    return f"{instruction}\n\n{inp}" if inp else instruction


def gpt4all_2023_text(instruction: str, inp: str, output: str) -> tuple[str, str]:
    """The original script's strings: prompt = instruction + " " + input; text = prompt + " " + output."""
    prompt = instruction + " " + inp
    return prompt, prompt + " " + output


def gpt4all_2023_sequences(encode_default: Encode, examples: Sequence[tuple[str, str, str]],
                           stride: int = GPT4ALL_2023_STRIDE) -> Scored:
    """`gpt4all_2023`: the arithmetic of GPT4All's eval_self_instruct.py (2023), token for token.

    `examples` are (instruction, input, output); `encode_default` tokenizes with the tokenizer's default special
    tokens (BOS where the model adds one), as `tokenizer(text)` did. Windows ids[begin:begin+stride] start at
    the prompt's token count P of the whole text's N tokens, each fed WITHOUT earlier context; every window token
    but the first is a target (HF loss = mean over the window's L-1 shifted tokens, NaN when L == 1). The script
    then weights each window's mean loss by trg_len = end - prev_end (the first window's trg_len counts from 0,
    i.e. includes the prompt) and divides the sum by N before exp. NLL is NaN when P >= N (the script crashed).
    """
    seqs, labels, plan = [], [], []
    for instruction, inp, output in examples:
        prompt, text = gpt4all_2023_text(instruction, inp, output)
        n_prompt, ids = len(encode_default(prompt)), list(encode_default(text))
        windows, prev_end = [], 0
        for begin in range(n_prompt, len(ids), stride):
            end = min(begin + stride, len(ids))
            windows.append((len(seqs), end - prev_end))
            seqs.append(ids[begin:end])
            labels.append(ids[begin:end])
            prev_end = end
            if end == len(ids):
                break
        plan.append((windows, len(ids)))

    def fold(res: list[tuple[float, int]]) -> list[float]:
        out = []
        for windows, n in plan:
            if not windows:
                out.append(float("nan"))
                continue
            total = 0.0
            for w, trg_len in windows:
                s, cnt = res[w]
                total += (s / cnt if cnt else float("nan")) * trg_len
            out.append(total / n)
        return out

    return Scored(seqs, labels, fold)


# ---------------------------------------------------------------- backwards-compatible one-call helpers

def response_nll_hf(model: Any, tokenizer: Any, template: Any, pairs: Sequence[tuple[str, str]],
                    max_length: int = 512, batch_size: int = 4, progress: bool = True) -> list[float]:
    """Mean NLL (nats) of each reference response given its prompt (`conditional`), with a HF causal LM."""
    s = conditional_sequences(lambda t: tokenizer.encode(t, add_special_tokens=False), template, pairs, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return s.fold(sequence_nll_hf(model, s.seqs, s.labels, pad, batch_size, progress))


def response_nll_gguf(gguf_path: str | Path, template: Any, pairs: Sequence[tuple[str, str]], max_length: int = 512,
                      n_threads: int = 1, n_ctx: int = 1024, progress: bool = True) -> list[float]:
    """Mean NLL (nats) of each reference response given its prompt (`conditional`), through llama.cpp."""
    from gpt4all.core.llamacpp import Llama

    llm = Llama(str(gguf_path), logits_all=True, n_threads=n_threads, n_ctx=max(n_ctx, max_length), verbose=False)
    try:
        s = conditional_sequences(lambda t: llm.tokenize(t.encode(), add_bos=False, special=True), template, pairs,
                                  max_length)
        return s.fold(sequence_nll_llama(llm, s.seqs, s.labels, progress))
    finally:
        llm.close()


# ---------------------------------------------------------------- comparing models

def perplexity_summary(ppl: Sequence[float], clip: float, nan: int = 0) -> dict[str, float]:
    """Mean, median and share of examples at the clip value."""
    n = len(ppl)
    return {"mean": sum(ppl) / n if n else float("nan"), "median": median(ppl),
            "share_clipped": sum(p >= clip for p in ppl) / n if n else float("nan"), "nan": nan, "n": n}


def compare_perplexities(a: Sequence[float], b: Sequence[float], paired: bool = True) -> dict[str, Any]:
    """One-sided test that model a's perplexities are stochastically LOWER than model b's.

    Paired (the same examples in the same order): Wilcoxon signed-rank on a - b, alternative 'less' (zero
    differences dropped, as with clipped ties at the clip value). Unpaired: Mann-Whitney U, alternative 'less'.
    Returns the test's name, statistic, p-value and the share of examples where a < b (paired) or the
    common-language effect size P(a < b), ties half (unpaired).
    """
    from scipy import stats

    if paired:
        if len(a) != len(b):
            raise ValueError(f"a paired test needs the same examples: got {len(a)} and {len(b)} values")
        diffs = [x - y for x, y in zip(a, b)]
        nonzero = [d for d in diffs if d != 0]
        if not nonzero:
            return {"test": "wilcoxon", "alternative": "less", "statistic": float("nan"), "p_value": 1.0,
                    "n": len(a), "n_nonzero": 0, "share_lower": 0.0}
        res = stats.wilcoxon(nonzero, alternative="less")
        return {"test": "wilcoxon", "alternative": "less", "statistic": float(res.statistic),
                "p_value": float(res.pvalue), "n": len(a), "n_nonzero": len(nonzero),
                "share_lower": sum(d < 0 for d in diffs) / len(diffs)}
    res = stats.mannwhitneyu(a, b, alternative="less")
    return {"test": "mannwhitneyu", "alternative": "less", "statistic": float(res.statistic),
            "p_value": float(res.pvalue), "n": len(a), "n_b": len(b),
            "share_lower": 1.0 - float(res.statistic) / (len(a) * len(b)) if a and b else float("nan")}
