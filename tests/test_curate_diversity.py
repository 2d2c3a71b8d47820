"""curate on real data: MinHash matches datasketch, planted near-duplicates are found, the diversity rule
flags the real P3 sample and not a diverse source, and the maps have one point per sampled row."""

from __future__ import annotations

import csv
import json
import random

import datasets
import numpy as np
import pytest
from datasketch import MinHash
from test_curate import _run

from gpt4all.core.jsonl import read_jsonl
from gpt4all.curate.dedup import NearDedupFilter, shingle_hashes, word_hashes


@pytest.fixture(scope="module")
def codegen(shared_data):
    return read_jsonl(shared_data / "gpteacher" / "codegen.jsonl")


@pytest.fixture(scope="module")
def p3(shared_data):
    return read_jsonl(shared_data / "p3_t0" / "p3_t0_sample.jsonl")


def test_signatures_equal_datasketch_minhash():
    f = NearDedupFilter(num_perm=32, ngram=3, seed=7)
    texts = ["the quick brown fox jumps over the lazy dog", "a b", "Ünïcode wörds, and punctuation!"]
    sig, _ = f.signatures(texts)
    shingles, per_text = shingle_hashes(*word_hashes(texts), 3)
    start = 0
    for i, n in enumerate(per_text):
        m = MinHash(num_perm=32, seed=7, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(h) for h in shingles[start:start + n]])
        start += n
        assert np.array_equal(m.hashvalues, sig[i])


def _perturb(text: str, rng: random.Random) -> str:
    """A near copy: one word changed near the end, or a short phrase appended (Jaccard of 5-shingles > 0.9)."""
    words = text.split(" ")
    if rng.random() < 0.5:
        words[-2] = words[-2].upper() + "s"
    else:
        words.append(rng.choice(["Hope this helps.", "Done!", "Enjoy"]))
    return " ".join(words)


def test_near_dedup_finds_planted_near_duplicates(codegen):
    rng = random.Random(0)
    base = [r for r in codegen if len((r["prompt"] + r["response"]).split()) > 80][:400]
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in base]
    planted = {}
    for k in rng.sample(range(len(base)), 40):
        planted[len(rows)] = k
        rows.append({"prompt": base[k]["prompt"], "response": _perturb(base[k]["response"], rng)})
    f = NearDedupFilter(threshold=0.8, num_perm=64)
    keys = f.keys(rows)
    dup_of = f.select(keys, np.ones(len(rows), bool))
    found = {i: int(j) for i, j in enumerate(dup_of) if j >= 0}
    assert all(found.get(i) == k for i, k in planted.items())  # every planted copy points at its original
    extra = set(found) - set(planted)
    assert len(extra) <= 4, f"unexpected near-duplicates among distinct rows: {extra}"


def test_diversity_rule_drops_p3_keeps_a_diverse_source_and_draws_maps(tmp_path, p3, codegen):
    """A regression check on the real P3 sample (the data the thresholds were chosen on, so it cannot show that
    they generalise: test_diversity_rule_separates_sources_it_was_not_tuned_on does) and the maps."""
    rng = random.Random(1)
    rows = []
    for i, r in enumerate(rng.sample(p3, 1200) + rng.sample(codegen, 1200)):
        rows.append({"id": f"x{i}", "source": r["source"], "prompt": r["prompt"], "response": r["response"],
                     "finish_reason": "stop", "error": None, "usage": None})
    result, out = _run(tmp_path, rows, ["curation.diversity.sample_size=800", "curation.maps.max_points=600",
                                        "curation.maps.n_topics=12", "curate.num_proc=1"])
    report = json.loads((out / "diversity.json").read_text())
    assert report["p3"]["flagged"] and report["p3"]["dropped"]
    assert not report["gpteacher_codegen"]["flagged"] and not report["gpteacher_codegen"]["dropped"]
    assert set(report["p3"]["failed"]) >= {"median_tokens", "unique_response_share"}
    assert result["dropped_sources"] == ["p3"] and result["kept_per_source"]["p3"] == 0
    assert "low diversity" in (out / "diversity.md").read_text()
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["dropped"]["low_diversity_source"] == funnel["stages"]["cleaned"] - funnel["stages"]["final"]
    assert len(datasets.load_from_disk(result["dataset"])) == funnel["kept"]

    maps = out / "maps"
    for name in ("map_by_source.png", "map_by_topic.png", "map.html", "topics.md"):
        assert (maps / name).stat().st_size > 0
    with (maps / "points.csv").open() as f:
        points = list(csv.DictReader(f))
    assert len(points) == 600  # one point per sampled row
    assert {p["source"] for p in points} == {"p3", "gpteacher_codegen"}
    assert all(p["kept"] == "0" for p in points if p["source"] == "p3")
    topics = json.loads((maps / "topics.json").read_text())
    assert sum(t["size"] for t in topics["topics"]) == 600 and all(t["keywords"] for t in topics["topics"])
    # P3's templated prompts form the dense clusters the paper saw in Atlas
    assert any(max(t["sources"], key=t["sources"].get) == "p3" for t in topics["homogeneous_clusters"])


def _synthetic_sources(n: int = 300, seed: int = 7) -> list[dict]:
    """Two made-up sources the thresholds were never tuned on: `templated` (one prompt template around a random
    passage, one-word answers from three choices, as P3's classification tasks) and `varied` (prompts and
    answers of random pseudo-words, free openings, lengths from 10 to 200 words)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(5000)]
    words = lambda k: " ".join(rng.choice(vocab) for _ in range(k))  # noqa: E731
    rows = []
    for i in range(n):
        rows.append({"source": "templated", "prompt": f"Read the passage: {words(10)}. Question: is the passage "
                     f"about {rng.choice(vocab)}? Answer yes, no or maybe.", "response": rng.choice(["Yes", "No", "Maybe"])})
        rows.append({"source": "varied", "prompt": f"{words(rng.randint(6, 30))}?",
                     "response": words(int(rng.lognormvariate(3.6, 0.6)) + 10) + "."})
    return [{"id": f"s{i}", **r, "finish_reason": "stop", "error": None, "usage": None} for i, r in enumerate(rows)]


def test_diversity_rule_separates_sources_it_was_not_tuned_on(tmp_path):
    """The default thresholds (chosen on the real P3 sample) flag a template-homogeneous synthetic source and
    pass a diverse one."""
    result, out = _run(tmp_path, _synthetic_sources(), ["curation.diversity.sample_size=250",
                                                        "curation.maps.enabled=false", "curate.num_proc=1"])
    report = json.loads((out / "diversity.json").read_text())
    templated, varied = report["templated"], report["varied"]
    assert templated["rows"] >= 200 and varied["rows"] >= 200  # both judged (min_rows), nothing deduplicated away
    assert templated["flagged"] and templated["dropped"]
    assert {"unique_response_share", "median_tokens", "top_prefix_share", "length_cv"} <= set(templated["failed"])
    assert not varied["flagged"] and varied["failed"] == []
    assert result["dropped_sources"] == ["templated"] and result["kept_per_source"]["varied"] == varied["rows"]


def test_confirm_z_recovers_pairs_whose_estimate_falls_below_the_threshold():
    """Pairs at the threshold whose 64-permutation estimate reads low are lost at confirm_z=0 and joined at 2
    (confirmed at 0.8 - 2 * 0.05 = 0.70); pairs far below the threshold stay apart at both."""
    words = [f"w{i}" for i in range(20_000)]
    rows, near, far = [], [], []
    for k in range(200):  # 36 words, 32 shingles; the copy's last m words replaced: m=3 shares 29 of 35 shingles
        base = words[k * 36:(k + 1) * 36]  # (Jaccard 0.83), m=13 shares 19 of 45 (0.42)
        m = 3 if k % 2 else 13
        rows.append({"prompt": " ".join(base), "response": ""})
        (near if k % 2 else far).append(len(rows))
        rows.append({"prompt": " ".join(base[:-m] + [f"x{k}_{j}" for j in range(m)]), "response": ""})
    found = {}
    for z in (0.0, 2.0):
        f = NearDedupFilter(threshold=0.8, num_perm=64, fields=["prompt"], confirm_z=z)
        assert f.confirm_at == pytest.approx(0.8 - z * 0.05)
        dup_of = f.select(f.keys(rows), np.ones(len(rows), bool))
        found[z] = {i for i in near if dup_of[i] == i - 1}
        assert not any(dup_of[i] >= 0 for i in far)
    assert found[0.0] < found[2.0] and len(found[2.0]) >= 0.9 * len(near)
    with pytest.raises(ValueError, match="confirm_z"):
        NearDedupFilter(confirm_z=-1)
