"""The comparison statistics point the right way on constructed data, and the Figure-3 plot is written."""

from __future__ import annotations

import random

import pytest

from gpt4all.core.metrics import compare_perplexities, effect_line, perplexity_summary, ratio_ci
from gpt4all.evaluate.plots import perplexity_plot


def _data(n=60, shift=2.0, seed=0):
    rng = random.Random(seed)
    b = [rng.uniform(3, 40) for _ in range(n)]
    a = [max(1.0, x - shift + rng.gauss(0, 0.5)) for x in b]
    return a, b


def test_paired_wilcoxon_direction():
    a, b = _data()
    lower = compare_perplexities(a, b)
    assert lower["test"] == "wilcoxon" and lower["p_value"] < 1e-6 and lower["share_lower"] > 0.9
    higher = compare_perplexities(b, a)
    assert higher["p_value"] > 0.99
    same = compare_perplexities(b, list(b))
    assert same["p_value"] == 1.0 and same["n_nonzero"] == 0


def _scaled(n=200, low=1.0, high=1.2, seed=0):
    """b, and a = b times a ratio drawn from U(low, high): the true median ratio is (low + high) / 2."""
    rng = random.Random(seed)
    b = [rng.uniform(2, 60) for _ in range(n)]
    return [x * rng.uniform(low, high) for x in b], b


def test_median_paired_ratio_and_its_bootstrap_interval():
    a, b = _scaled()
    r = ratio_ci(a, b, seed=3)
    assert r["ci_low"] < r["ratio"] < r["ci_high"]
    assert r["ci_low"] < 1.1 < r["ci_high"] and r["ci_low"] > 1.05 and r["ci_high"] < 1.15  # holds the truth, excludes 1
    assert ratio_ci(a, b, seed=3) == r  # seeded: the same interval twice
    wide = ratio_ci(a[:20], b[:20], seed=3)  # fewer examples: a wider interval
    assert wide["ci_high"] - wide["ci_low"] > r["ci_high"] - r["ci_low"]
    unpaired = ratio_ci(a, b, paired=False, seed=3)
    assert unpaired["ci_high"] - unpaired["ci_low"] > r["ci_high"] - r["ci_low"]  # pairing removes item variance


def test_quantization_is_a_two_sided_test_reported_as_a_cost():
    a, b = _scaled(low=1.0, high=1.1)  # "quantized" 5 % worse in the median
    t = compare_perplexities(a, b, alternative="two-sided")
    assert t["alternative"] == "two-sided" and t["p_value"] < 1e-6
    assert compare_perplexities(b, a, alternative="two-sided")["p_value"] == pytest.approx(t["p_value"])
    assert compare_perplexities(a, b)["p_value"] > 0.99  # the one-sided "lower than" only says "no"
    line = effect_line({"a": "q4_0", "b": "finetuned", "role": "quantization", **t})
    lo, hi = 100 * (t["ci_low"] - 1), 100 * (t["ci_high"] - 1)
    assert line.startswith(f"q4_0 costs +{100 * (t['ratio'] - 1):.1f} % perplexity [{lo:+.1f}, {hi:+.1f}]")
    assert 0 < lo < 5 < hi < 10
    with pytest.raises(ValueError, match="alternative"):
        compare_perplexities(a, b, alternative="greater")


def test_paired_test_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        compare_perplexities([1.0, 2.0], [1.0])


def test_unpaired_mann_whitney_direction():
    rng = random.Random(1)
    a, b = [rng.uniform(2, 10) for _ in range(40)], [rng.uniform(6, 20) for _ in range(55)]
    res = compare_perplexities(a, b, paired=False)
    assert res["test"] == "mannwhitneyu" and res["p_value"] < 1e-4 and res["share_lower"] > 0.7
    assert compare_perplexities(b, a, paired=False)["p_value"] > 0.99


def test_summary_and_plot(tmp_path):
    a, b = _data()
    s = perplexity_summary(a + [100.0, 100.0], clip=100.0)
    assert s["n"] == 62 and s["share_clipped"] == pytest.approx(2 / 62) and s["median"] < s["mean"]
    out = perplexity_plot({"finetuned": a, "base": b, "with zeros": [0.0] + b[1:]}, 100.0, tmp_path / "p.png", "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_leaves_out_scores_that_are_not_positive():
    """eval.method=gpt4all_2023 turns NaN scores into 0: those examples drop out of the ratio, counted."""
    a, b = _scaled(n=50)
    a[3], b[7] = 0.0, float("nan")
    r = ratio_ci(a, b)
    assert r["n_ratio"] == 48 and 1.0 < r["ratio"] < 1.2 and r["ci_low"] < r["ratio"] < r["ci_high"]
    assert ratio_ci(a, b, paired=False)["n_ratio"] == 49
    assert ratio_ci([0.0], [1.0])["n_ratio"] == 0
