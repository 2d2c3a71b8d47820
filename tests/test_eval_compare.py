"""The comparison statistics point the right way on constructed data, and the Figure-3 plot is written."""

from __future__ import annotations

import random

import pytest

from gpt4all.core.metrics import compare_perplexities, perplexity_summary
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
