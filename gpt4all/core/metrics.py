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
    causal attention never lets a real position see the pads, so padding never changes a score. The output head
    and log-softmax run only on the positions that predict a scored token (the prompt's positions are skipped),
    which on a 49k vocabulary is a large share of the work.
    """
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), tuple(seqs[i])))  # lm-eval's order
    device = next(model.parameters()).device
    split = _body_and_head(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(order), desc="nll (hf)", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start: start + batch_size]
                # a sequence's last token predicts nothing: it is not fed (as lm-eval does), so a batch's shapes,
                # and with them the float32 rounding of its matmuls, match lm-eval's for the same sequences
                width = max(max(len(seqs[i]) for i in batch) - 1, 1)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                target = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(seqs[i])
                    ids[row, : max(n - 1, 1)] = torch.as_tensor(list(seqs[i])[: max(n - 1, 1)])
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


ALTERNATIVES = ("less", "two-sided")


def ratio_ci(a: Sequence[float], b: Sequence[float], paired: bool = True, confidence: float = 0.95,
             seed: int = 0, n_resamples: int = 9999) -> dict[str, float]:
    """Effect size of model a against model b: the median of the per-example ratios a_i / b_i (paired) or the
    ratio of the medians (unpaired), with a seeded percentile bootstrap confidence interval
    (scipy.stats.bootstrap; percentile rather than BCa because clipped perplexities make many tied ratios).
    Scores that are not positive and finite (0 stands for NaN under eval.method=gpt4all_2023) are left out;
    `n_ratio` counts the examples used."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = lambda v: np.isfinite(v) & (v > 0)  # noqa: E731
    if paired:
        keep = ok(x) & ok(y)
        samples = (x[keep] / y[keep],)
        statistic = np.median
    else:
        samples = (x[ok(x)], y[ok(y)])
        statistic = lambda u, v, axis=-1: np.median(u, axis=axis) / np.median(v, axis=axis)  # noqa: E731
    n = min(len(s) for s in samples)
    out = {"ratio": float(statistic(*samples)) if n else float("nan"), "confidence": confidence, "n_ratio": n}
    if n < 2 or all(np.all(s == s[0]) for s in samples):  # no spread to resample
        return {**out, "ci_low": out["ratio"], "ci_high": out["ratio"]}
    res = stats.bootstrap(samples, statistic, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return {**out, "ci_low": float(lo), "ci_high": float(hi)}


def compare_perplexities(a: Sequence[float], b: Sequence[float], paired: bool = True, alternative: str = "less",
                         seed: int = 0) -> dict[str, Any]:
    """Test of model a's perplexities against model b's, with the effect size beside it.

    `alternative="less"`: a is stochastically LOWER than b (one-sided); `"two-sided"`: a differs from b (how a
    quantized model is compared with its original). Paired (the same examples in the same order): Wilcoxon
    signed-rank on a - b (zero differences dropped, as with clipped ties at the clip value); unpaired:
    Mann-Whitney U. Returns the test's name, alternative, statistic, p-value, the share of examples where a < b
    (paired) or P(a < b), ties half (unpaired), and `ratio` with its 95 % bootstrap interval
    `ci_low`..`ci_high` (see `ratio_ci`; below 1: a has lower perplexity).
    """
    from scipy import stats

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}; got {alternative!r}")
    if paired:
        if len(a) != len(b):
            raise ValueError(f"a paired test needs the same examples: got {len(a)} and {len(b)} values")
        diffs = [x - y for x, y in zip(a, b)]
        nonzero = [d for d in diffs if d != 0]
        effect = ratio_ci(a, b, paired=True, seed=seed)
        if not nonzero:
            return {"test": "wilcoxon", "alternative": alternative, "statistic": float("nan"), "p_value": 1.0,
                    "n": len(a), "n_nonzero": 0, "share_lower": 0.0, **effect}
        res = stats.wilcoxon(nonzero, alternative=alternative)
        return {"test": "wilcoxon", "alternative": alternative, "statistic": float(res.statistic),
                "p_value": float(res.pvalue), "n": len(a), "n_nonzero": len(nonzero),
                "share_lower": sum(d < 0 for d in diffs) / len(diffs), **effect}
    res = stats.mannwhitneyu(a, b, alternative=alternative)
    u_less = res.statistic if alternative == "less" else stats.mannwhitneyu(a, b, alternative="less").statistic
    return {"test": "mannwhitneyu", "alternative": alternative, "statistic": float(res.statistic),
            "p_value": float(res.pvalue), "n": len(a), "n_b": len(b),
            "share_lower": 1.0 - float(u_less) / (len(a) * len(b)) if a and b else float("nan"),
            **ratio_ci(a, b, paired=False, seed=seed)}


def effect_line(test: dict[str, Any]) -> str:
    """One line: the perplexity change of a against b with its interval, then the test, e.g.
    "q4 costs +3.1 % perplexity [+1.2, +5.0] against finetuned (median paired ratio, 95 % CI); wilcoxon
    two-sided p = 0.002"."""
    pct = lambda r: f"{100 * (r - 1):+.1f}"  # noqa: E731
    kind = "median paired ratio" if test["test"] == "wilcoxon" else "ratio of medians"
    ci = f"[{pct(test['ci_low'])}, {pct(test['ci_high'])}] ({kind}, {100 * test.get('confidence', 0.95):g} % CI)"
    head = (f"{test['a']} costs {pct(test['ratio'])} % perplexity {ci} against {test['b']}"
            if test.get("role") == "quantization" else f"{test['a']} vs {test['b']}: perplexity {pct(test['ratio'])} % {ci}")
    return f"{head}; {test['test']} {test['alternative']} p = {test['p_value']:.3g}"


# ---------------------------------------------------------------- KL divergence to the unquantized model

def token_divergence(ref_logits: Any, q_logits: Any, targets: Any, log_ref: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """Per scored token, a quantized model against its reference (llama-perplexity --kl-divergence's terms).

    `ref_logits` and `q_logits` are [N, V] logits at the N positions that predict `targets` [N]. Returns float64
    tensors: `kld` = KL(P_ref || P_q), `same_top` (1.0 where both argmaxes agree), `delta_p` = P_q(target) -
    P_ref(target), and `nll_ref` / `nll_q` of the target. Vectorised over tokens, in float64. `log_ref`: the
    reference's log-softmax when already computed (one reference against many models).
    """
    ref = torch.as_tensor(ref_logits).double()
    q = torch.as_tensor(q_logits).double()
    if ref.shape != q.shape or ref.ndim != 2:
        raise ValueError(f"reference and quantized logits must be [tokens, vocab] of one shape: {tuple(ref.shape)} "
                         f"vs {tuple(q.shape)}")
    t = torch.as_tensor(targets, dtype=torch.long).reshape(-1, 1)
    log_ref = torch.log_softmax(ref, -1) if log_ref is None else log_ref
    log_q = torch.log_softmax(q, -1)
    kld = (log_ref.exp() * (log_ref - log_q)).sum(-1).clamp_min(0.0)
    nll_ref, nll_q = -log_ref.gather(1, t).squeeze(1), -log_q.gather(1, t).squeeze(1)
    return {"kld": kld, "same_top": (ref.argmax(-1) == q.argmax(-1)).double(),
            "delta_p": (-nll_q).exp() - (-nll_ref).exp(), "nll_ref": nll_ref, "nll_q": nll_q}


class Divergence:
    """Accumulates token_divergence over examples and summarises it (with example-level bootstrap CIs)."""

    KEYS = ("kld", "same_top", "delta_p", "nll_ref", "nll_q")

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS}
        self.example: list[torch.Tensor] = []

    def add(self, ref_logits: Any, q_logits: Any, targets: Any, log_ref: torch.Tensor | None = None) -> None:
        """One example's scored positions (an example with no scored token is skipped)."""
        if len(targets) == 0:
            return
        part = token_divergence(ref_logits, q_logits, targets, log_ref)
        for k in self.KEYS:
            self.parts[k].append(part[k])
        self.example.append(torch.full((len(targets),), len(self.example), dtype=torch.long))

    def tokens(self) -> dict[str, torch.Tensor]:
        if not self.example:
            raise ValueError("no scored tokens: every example was empty")
        return {k: torch.cat(v) for k, v in self.parts.items()}

    def summary(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        return divergence_summary(self.tokens(), torch.cat(self.example), n_boot, seed, level)


def divergence_summary(tok: dict[str, torch.Tensor], example: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict[str, Any]:
    """Mean / median / 99th-percentile / max KLD, same-top-token %, RMS delta-p (%), and the perplexity ratio
    PPL(q) / PPL(ref) = exp(mean NLL_q - mean NLL_ref) over all scored tokens; CIs of mean KLD and of the ratio
    by a percentile bootstrap over examples (tokens of one example move together)."""
    kld, d_nll = tok["kld"], tok["nll_q"] - tok["nll_ref"]
    n_ex = int(example.max()) + 1
    count = torch.bincount(example, minlength=n_ex).double()
    kld_sum = torch.zeros(n_ex, dtype=torch.float64).index_add_(0, example, kld)
    dnll_sum = torch.zeros(n_ex, dtype=torch.float64).index_add_(0, example, d_nll)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, n_ex, (n_boot, n_ex), generator=gen)
    n_b = count[pick].sum(1)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    boot_kld = kld_sum[pick].sum(1) / n_b
    boot_ratio = (dnll_sum[pick].sum(1) / n_b).exp()
    q = torch.tensor([lo, hi], dtype=torch.float64)
    return {
        "tokens": int(kld.numel()), "examples": n_ex,
        "mean_kld": float(kld.mean()), "mean_kld_ci": [float(x) for x in boot_kld.quantile(q)],
        "median_kld": float(kld.quantile(0.5)), "p99_kld": float(kld.quantile(0.99)), "max_kld": float(kld.max()),
        "same_top_pct": float(100 * tok["same_top"].mean()),
        "rms_delta_p_pct": float(100 * tok["delta_p"].pow(2).mean().sqrt()),
        "ppl_ratio": float(d_nll.mean().exp()), "ppl_ratio_ci": [float(x) for x in boot_ratio.quantile(q)],
    }
