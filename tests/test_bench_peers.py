"""The pieces of the peer benchmarks (issue 15): CPU precision pick, the raw aiohttp client, the lm-eval task."""

from __future__ import annotations

import asyncio

import pytest
from omegaconf import OmegaConf

from gpt4all.collect.testing_server import FakeOpenAI
from gpt4all.core.cpu import cpu_flags, describe, native_bf16
from gpt4all.train.cpu import cpu_precision

AMX = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
AVX512_BF16 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AVX2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx2 fma\n"


@pytest.mark.parametrize("cpuinfo,expected", [(AMX, "bf16-mixed"), (AVX512_BF16, "bf16-mixed"), (AVX2, "32-true"),
                                              ("", "32-true")])
def test_cpu_precision_auto_follows_the_bf16_flags(cpuinfo, expected):
    assert cpu_precision("auto", cpu_flags(cpuinfo)) == expected
    assert cpu_precision(None, cpu_flags(cpuinfo)) == expected


def test_cpu_precision_keeps_an_explicit_choice():
    assert cpu_precision("32-true", cpu_flags(AMX)) == "32-true"
    assert cpu_precision("bf16-mixed", cpu_flags(AVX2)) == "bf16-mixed"


def test_this_machine_is_described_from_its_flags():
    d = describe()
    assert d["native_bf16"] == native_bf16() == bool(set(d["flags"]) & {"amx_bf16", "avx512_bf16"})
    assert d["cpus"] >= 1 and isinstance(d["cpu"], str)


def test_trainer_cpu_config_asks_for_auto_precision():
    from omegaconf import OmegaConf

    from gpt4all.core.config import conf_dir

    assert OmegaConf.load(conf_dir() / "trainer" / "cpu.yaml").precision == "auto"


def test_raw_aiohttp_client_answers_every_request():
    from gpt4all.bench.collect import raw_aiohttp

    with FakeOpenAI(latency_s=0.01) as srv:
        seconds, answered = asyncio.run(raw_aiohttp(srv.base_url, 20, 4))
        assert answered == 20 and len(srv.answered()) == 20
    assert 0.01 * 20 / 4 <= seconds  # 4 in flight, 10 ms each: at least 5 waits


def test_raw_aiohttp_client_fails_loudly_on_server_errors():
    from aiohttp import ClientResponseError

    from gpt4all.bench.collect import raw_aiohttp
    from gpt4all.collect.testing_server import Faults

    with FakeOpenAI(latency_s=0.0, faults=Faults(rate_500=1.0)) as srv, pytest.raises(ClientResponseError):
        asyncio.run(raw_aiohttp(srv.base_url, 4, 2))


def test_collect_summary_pairs_each_collector_run_with_the_raw_run_of_its_repeat():
    from gpt4all.bench.collect import RAW, summarise

    coll = "gpt4all collector (aiohttp)"
    rates = {(RAW, 0): 600.0, (coll, 0): 570.0, (RAW, 1): 500.0, (coll, 1): 490.0, (RAW, 2): 610.0, (coll, 2): 580.0}
    rows = [{"client": k, "concurrency": 64, "repeat": r, "requests": 640, "answered": 640, "requests_per_s": v,
             "client_cpu_ms_per_request": 1.0, "server_cpu_ms_per_request": 0.2} for (k, r), v in rates.items()]
    raw, mine = summarise(rows, latency=0.1)
    assert raw["of_raw"] is None and raw["requests_per_s"] == 600.0 and mine["requests_per_s"] == 570.0
    assert mine["of_raw"]["ratio"] == pytest.approx(580 / 610)  # median of 0.950, 0.980, 0.951: paired by repeat
    assert mine["of_raw"]["ci_low"] <= mine["of_raw"]["ratio"] <= mine["of_raw"]["ci_high"]
    assert mine["of_capacity"]["ratio"] == pytest.approx(570 / 640) and mine["repeats"] == 3


def test_lm_eval_task_scores_what_the_project_scores(tmp_path, tiny_model_cfg, cache_dir):
    """The local lm-eval task on a tiny model: lm-eval's HF backend and the project's batched scorer give the same
    per-item log-likelihood of each continuation given its templated context."""
    pytest.importorskip("lm_eval", reason='lm-eval is in the bench extra: pip install -e ".[bench]"')
    from lm_eval.models.huggingface import HFLM as LMEvalHF

    from gpt4all.bench.evaluate import lm_eval_loglikelihoods, lm_eval_split
    from gpt4all.core.lm import HFLM
    from gpt4all.core.models import load_model, load_tokenizer
    from gpt4all.core.template import render_prompt, resolve_template

    model, tok = load_model(tiny_model_cfg, cache_dir, seed=0).eval(), load_tokenizer(tiny_model_cfg, cache_dir)
    template = resolve_template(OmegaConf.create({"style": "chat"}), tok)
    pairs = [(render_prompt(template, q), a) for q, a in [
        ("Name a colour.", "Blue."), ("Add 2 and 3.", "2 + 3 = 5"),
        ("Write a haiku about rain.", "Soft rain on the roof,\nthe gutters hum a low song,\nsleep comes with the grey."),
        ("Say nothing.", " ")]]
    theirs, total_s, ll_s = lm_eval_loglikelihoods(LMEvalHF(pretrained=model, tokenizer=tok, batch_size=2), pairs,
                                                   tmp_path)
    split = [lm_eval_split(lambda t: tok.encode(t, add_special_tokens=False), c, x) for c, x in pairs]
    ours = [-s for s, _ in HFLM(model, tok).nll([s for s, _ in split], [lab for _, lab in split], batch_size=3,
                                                progress=False)]
    assert len(theirs) == len(pairs) and 0 < ll_s <= total_s
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert all(x < 0 for x in theirs)


def test_lm_eval_split_moves_the_contexts_trailing_whitespace():
    from gpt4all.bench.evaluate import lm_eval_split

    encode = lambda t: [ord(c) for c in t]  # noqa: E731 - one id per character
    ids, labels = lm_eval_split(encode, "Q: hi\n", "A")
    assert ids == encode("Q: hi\nA") and labels == [-100] * 5 + encode("\nA")


def test_datatrove_and_near_dedup_find_the_same_planted_duplicate(tmp_path):
    pytest.importorskip("datatrove", reason='datatrove is in the bench extra: pip install -e ".[bench]"')
    pytest.importorskip("orjson")
    import json

    from gpt4all.bench._dedup_peer import run_datatrove, run_ours

    words = [f"w{i}" for i in range(400)]
    texts = [" ".join(words[i * 20:(i + 1) * 20]) for i in range(20)]
    texts.append(texts[3] + " hope this helps")  # 20 words + 3: shingle Jaccard 16 / 19 = 0.84 >= 0.8
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    for run in (run_ours, run_datatrove):
        dups, clusters = run(path)
        assert dups == [20] and [sorted(c) for c in clusters] == [[3, 20]], run.__name__


def test_a_peer_that_does_not_import_is_named_and_skipped(monkeypatch):
    import gpt4all.bench.train as bench_train

    monkeypatch.setitem(bench_train.PEERS, "trl_sft", "no_such_peer_package")
    missing = bench_train.missing_peers(["gpt4all-lab", "trl_sft", "hf_trainer_peft"])
    assert list(missing) == ["trl_sft"] and "no_such_peer_package" in missing["trl_sft"]


def test_recall_difference_counts_discordant_pairs_and_tests_them():
    import numpy as np
    from scipy.stats import binomtest

    from gpt4all.bench.curate import recall_difference

    ours = np.array([True] * 90 + [False] * 10)
    theirs = np.array([True] * 80 + [False] * 2 + [True] * 8 + [True] * 10)  # 2 only ours, 10 only theirs
    r = recall_difference(ours, theirs)
    assert (r["only_ours"], r["only_datatrove"]) == (2, 10)
    assert r["difference"] == (2 - 10) / 100
    assert r["mcnemar_p"] == binomtest(2, 12).pvalue < 0.05
    assert recall_difference(ours, ours) == {"only_ours": 0, "only_datatrove": 0, "difference": 0.0, "mcnemar_p": 1.0}
