"""curate: each filter on crafted rows, the chain built from config, and the stage on a collect run dir."""

from __future__ import annotations

import csv
import json

import datasets
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from gpt4all.core.config import CONF_PACKAGE, ConfigError, validate
from gpt4all.core.jsonl import JsonlError, write_jsonl
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.tracking import Tracker
from gpt4all.curate import engine
from gpt4all.curate.dedup import ExactDedupFilter
from gpt4all.curate.engine import build_chain
from gpt4all.curate.filters import (
    EmptyFilter,
    FailedFilter,
    LanguageFilter,
    LengthFilter,
    MalformedFilter,
    RefusalFilter,
    TruncatedFilter,
)
from gpt4all.curate.funnel import Funnel
from gpt4all.curate.stage import run


def rec(i, source="a", response="fine answer", finish="stop", error=None, prompt=None, **extra):
    return {"id": f"r{i}", "source": source, "prompt": prompt or f"question {i}", "response": response,
            "finish_reason": finish, "error": error, "usage": None, "latency_s": 0.1, **extra}


ROWS = [
    rec(0),
    rec(1, error={"type": "RateLimitError", "status": 429, "message": "slow down"}, response=None, finish=None),
    rec(2, response="   "),
    rec(3, finish="length"),
    rec(4, response="As an AI language model, I cannot do that."),
    rec(5, prompt="Question 0", response="Fine   ANSWER"),     # same pair as r0 after normalisation
    rec(6, source="b", attempts=2),                              # a field added by collect is carried along
    rec(7, source="b", response=None),
    rec(8, source="b", response="```python\nprint(1)\n"),        # open code fence
    rec(9, source="b", response="Caf\u00c3\u00a9 au lait"),     # mojibake
]
LOOP = "the answer is " * 60


@pytest.mark.parametrize("flt,row,expected", [
    (FailedFilter(), ROWS[1], (False, "failed:RateLimitError")),
    (FailedFilter(), ROWS[0], True),
    (EmptyFilter(), ROWS[2], (False, "empty")),
    (EmptyFilter(), ROWS[7], (False, "empty")),
    (EmptyFilter(min_chars=20), ROWS[0], (False, "empty")),
    (EmptyFilter(), ROWS[0], True),
    (TruncatedFilter(), ROWS[3], (False, "truncated:length")),
    (TruncatedFilter(), ROWS[8], (False, "truncated:code_fence")),
    (TruncatedFilter(), rec(0, response="```py\nx = 1\n```\ndone"), True),
    (TruncatedFilter(check_code_fences=False), ROWS[8], True),
    (RefusalFilter(["as an ai language model"]), ROWS[4], (False, "refusal")),
    (RefusalFilter(["as an ai language model"]), ROWS[0], True),
    (RefusalFilter(["i will not"]), rec(0, response="Sorry, I WILL NOT."), (False, "refusal")),
    (MalformedFilter(), ROWS[9], (False, "malformed:encoding")),
    (MalformedFilter(), rec(0, response="bad \ufffd byte"), (False, "malformed:encoding")),
    (MalformedFilter(), rec(0, response=LOOP), (False, "malformed:repetition")),
    (MalformedFilter(), rec(0, response="\n".join(["- same item here"] * 12)), (False, "malformed:repetition")),
    (MalformedFilter(), rec(0, prompt="Explain photosynthesis in plants", response="explain photosynthesis in PLANTS"),
     (False, "malformed:prompt_echo")),
    (MalformedFilter(), rec(0, prompt="Explain photosynthesis in plants",
                            response="Explain photosynthesis in plants: plants turn light, water and CO2 into sugar."),
     True),
    (MalformedFilter(), rec(0, response="def f(x):\n    return x * 2\n\nprint(f(3))  # 6, as asked above"), True),
    (LengthFilter(min_tokens=3), rec(0, response="ok"), (False, "length:too_short")),
    (LengthFilter(max_tokens=5), rec(0, response="one two three, four five six"), (False, "length:too_long")),
    (LengthFilter(max_prompt_tokens=2), rec(0, prompt="a b c d"), (False, "length:prompt_too_long")),
    (LengthFilter(min_tokens=2, max_tokens=10), ROWS[0], True),
    (LanguageFilter(["en"]), rec(0, response="Ceci est une phrase en français, écrite pour le test."),
     (False, "language:fr")),
    (LanguageFilter(["en"]), rec(0, response="This is an English sentence written for the test."), True),
    (LanguageFilter(["en"]), rec(0, response="12345 + 67890 = 80235; 3 * 7 = 21 !!"), (False, "language:undetected")),
])
def test_filter_verdicts(flt, row, expected):
    assert flt.filter(row) == expected


def test_length_filter_counts_words_and_punctuation():
    assert LengthFilter().count("Hello, world! It's 42.") == 9  # Hello , world ! It ' s 42 .


def test_exact_dedup_keeps_the_first_after_normalisation():
    f = ExactDedupFilter()
    rows = [ROWS[0], ROWS[6], ROWS[5], ROWS[0]]
    keys = f.keys(rows)
    dup_of = f.select(keys, np.array([True, True, True, False]))
    assert dup_of.tolist() == [-1, -1, 0, -1]  # r5 duplicates r0; the last row was already dropped


def test_exact_dedup_hashes_each_field_on_its_own():
    """A pair is a duplicate only when prompt and response each match (after normalisation): moving a word
    across the field boundary makes a different pair; case and whitespace inside a field do not."""
    f = ExactDedupFilter()
    rows = [{"prompt": "a b", "response": "c"}, {"prompt": "a", "response": "b c"},
            {"prompt": "A  b", "response": " c\n"}, {"prompt": "a b\nc", "response": ""},
            {"prompt": "a b", "response": "d"}]
    keys = f.keys(rows)
    assert keys["hash"].shape == (5, 2)
    assert f.select(keys, np.ones(5, bool)).tolist() == [-1, -1, 0, -1, -1]
    responses_only = ExactDedupFilter(fields=["response"])
    assert responses_only.select(responses_only.keys(rows), np.ones(5, bool)).tolist() == [-1, -1, 0, -1, -1]


def compose_cfg(tmp_path, overrides=()):
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose("curate", overrides=["logger=none", f"paths.output_dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return validate(cfg)


def test_preset_builds_the_chain_in_order(tmp_path):
    chain = build_chain(compose_cfg(tmp_path).curation)
    assert chain.steps == ["failed", "empty", "truncated", "refusal", "malformed", "length", "exact_dedup",
                           "near_dedup", "source_rule"]
    cfg = compose_cfg(tmp_path, ["~curation.filters.near_dedup", "curation.drop_truncated=false",
                                 "curation.filters.refusal.phrases=[nope]"])
    chain = build_chain(cfg.curation)
    assert "near_dedup" not in chain.steps and "truncated" not in chain.steps
    assert next(f for f in chain.row if f.name == "refusal").phrases == ["nope"]
    assert build_chain(compose_cfg(tmp_path, ["curation=minimal"]).curation).steps == [
        "failed", "empty", "truncated", "refusal", "exact_dedup", "source_rule"]


@pytest.mark.parametrize("override,match", [
    ("+curation.filters.length.max_tokns=5", r"curation\.filters\.length.*max_tokns"),
    ("curation.filters.empty.min_chars=many", r"curation\.filters\.empty\.min_chars"),
    ("curation.filters.near_dedup.threshold=1.5", r"curation\.filters\.near_dedup.*threshold"),
    ("curation.filters.failed._target_=gpt4all.curate.filters.Nope", r"curation\.filters\.failed"),
])
def test_bad_filter_config_names_the_filter_key(tmp_path, override, match):
    cfg = compose_cfg(tmp_path, [override])
    with pytest.raises(ConfigError, match=match):
        build_chain(cfg.curation)


def test_funnel_counts_add_up():
    step = np.array([-1, 0, 0, 1, -1, 2, 2])
    src = np.array([0, 0, 1, 1, 1, 0, 1])
    f = Funnel.from_arrays(["failed", "dup", "source_rule"], ["a", "b"], src, step,
                           np.array([0, 1, 1, 2, 0, 3, 3]), ["", "failed:x", "dup", "low"])
    d = f.to_dict()
    assert d["total"] == 7 and d["kept"] == 2 and d["stages"] == {"raw": 7, "cleaned": 4, "final": 2}
    assert d["per_source"]["b"] == {"total": 4, "kept": 1, "dropped": {"dup": 1, "failed:x": 1, "low": 1}}
    for s in d["steps"]:
        assert s["in"] == s["out"] + s["dropped"]


def _collect_dir(tmp_path, rows):
    d = tmp_path / "collect"
    write_jsonl(d / "responses.jsonl", rows)
    write_manifest(d, "collect", "h", inputs={}, outputs={"responses": d / "responses.jsonl"})
    return d


def _run(tmp_path, rows, overrides=(), name="curate"):
    cdir = tmp_path / "collect" if (tmp_path / "collect").exists() else _collect_dir(tmp_path, rows)
    cfg = compose_cfg(tmp_path, [f"curate.input_dir={cdir}", *overrides])
    out = tmp_path / name
    return run(cfg, out, Tracker(cfg, "curate", out)), out


def test_stage_writes_dataset_quarantine_and_funnel(tmp_path):
    result, out = _run(tmp_path, ROWS, ["curation.maps.enabled=false"])
    ds = datasets.load_from_disk(result["dataset"])
    assert sorted(ds["id"]) == ["r0", "r6"] and set(ds.column_names) == {"id", "prompt", "response", "source"}
    assert all(isinstance(v, str) for c in ds.column_names for v in ds[c])
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) + len(ds) == len(ROWS)
    by_id = {r["id"]: r for r in rejects}
    assert by_id["r5"]["drop_reason"] == "exact_duplicate" and by_id["r5"]["duplicate_of"] == "r0"
    assert by_id["r1"]["error"]["status"] == 429 and by_id["r1"]["response"] is None  # the record, verbatim
    assert by_id["r8"]["drop_step"] == "truncated" and by_id["r9"]["drop_reason"] == "malformed:encoding"
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["kept"] == 2 and funnel["total"] == len(ROWS)
    assert funnel["dropped"] == {"empty": 2, "exact_duplicate": 1, "failed:RateLimitError": 1,
                                 "malformed:encoding": 1, "refusal": 1, "truncated:code_fence": 1,
                                 "truncated:length": 1}
    assert result["kept_per_source"] == {"a": 1, "b": 1} and result["total"] == len(ROWS)
    assert (out / "funnel.md").read_text().startswith("# Curation funnel")
    with (out / "funnel.csv").open() as f:
        lines = [r for r in csv.DictReader(f) if r["source"] == "all" and not r["reason"]]
    assert lines[0]["in"] == str(len(ROWS)) and lines[-1]["out"] == "2"
    manifest = read_manifest(out, "curate")
    assert manifest["counts"]["total"] == len(ROWS) and "dataset" in manifest["outputs"]
    assert not (out / "work").exists()  # removed after a finished run unless curate.keep_work=true


def test_resume_reuses_finished_shards_and_counts_right(tmp_path, monkeypatch):
    rows = [rec(i, source="ab"[i % 2], response=f"answer number {i} " + "word " * (i % 7)) for i in range(60)]
    rows += [rec(100 + i, response="") for i in range(5)] + [rec(200, prompt="question 3", response=rows[3]["response"])]
    over = ["curation.maps.enabled=false", "curate.shard_rows=20", "curate.num_proc=1", "curate.keep_work=true"]
    fresh, fresh_dir = _run(tmp_path, rows, over, name="fresh")

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "global_pass", crash)
    monkeypatch.setattr("gpt4all.curate.stage.global_pass", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, rows, over, name="first")
    monkeypatch.undo()
    assert len(list((tmp_path / "first" / "work" / "rows").glob("*.done"))) == 4
    (tmp_path / "first" / "work" / "rows" / "00003.done").unlink()  # as if killed inside the last shard
    calls = []
    real = engine._row_batch
    monkeypatch.setattr(engine, "_row_batch", lambda batch, chain: calls.append(len(batch["id"])) or real(batch, chain))
    resumed, out = _run(tmp_path, rows, [*over, f"curate.resume={tmp_path / 'first'}"], name="second")
    assert sum(calls) == len(rows) - 60  # only the unfinished shard ran again
    assert json.loads((out / "funnel.json").read_text()) == json.loads((fresh_dir / "funnel.json").read_text())
    assert resumed["kept"] == fresh["kept"] == 60  # 5 empty answers and 1 duplicate dropped
    with pytest.raises(ConfigError, match="no checkpoint"):
        _run(tmp_path, rows, [*over, f"curate.resume={tmp_path / 'nowhere'}"], name="fourth")
    with pytest.raises(ConfigError, match="curation"):
        _run(tmp_path, rows, [*over, f"curate.resume={tmp_path / 'first'}", "curation.filters.empty.min_chars=3"],
             name="third")


def test_stage_names_file_and_line_of_a_malformed_record(tmp_path):
    cdir = _collect_dir(tmp_path, ROWS[:2])
    with (cdir / "responses.jsonl").open("a") as f:
        f.write('{"id": "x", "prompt": "p"}\n')
    cfg = compose_cfg(tmp_path, [f"curate.input_dir={cdir}"])
    with pytest.raises(JsonlError, match=r"responses\.jsonl:3: missing field"):
        run(cfg, tmp_path / "curate", Tracker(cfg, "curate", tmp_path / "curate"))
