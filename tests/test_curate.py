"""curate: each filter, the funnel's counts, and the stage on a collect run dir."""

from __future__ import annotations

import json

import datasets
import pytest
from omegaconf import OmegaConf

from gpt4all.core.config import validate
from gpt4all.core.jsonl import JsonlError, write_jsonl
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.tracking import Tracker
from gpt4all.curate.filters import (EmptyFilter, ExactDuplicateFilter, FailedFilter, Funnel, RefusalFilter,
                                    TruncatedFilter, build_filters)
from gpt4all.curate.stage import run

CURATION = OmegaConf.create({
    "drop_failed": True, "drop_empty": True, "drop_truncated": True, "drop_refusals": True, "dedup_exact": True,
    "min_response_chars": 1, "refusal_patterns": ["as an ai language model"],
})


def rec(i, source="a", response="fine answer", finish="stop", error=None, prompt=None):
    return {"id": f"r{i}", "source": source, "prompt": prompt or f"question {i}", "response": response,
            "finish_reason": finish, "error": error, "usage": None}


ROWS = [
    rec(0),
    rec(1, error={"type": "RateLimitError", "status": 429}, response=None, finish=None),
    rec(2, response="   "),
    rec(3, finish="length"),
    rec(4, response="As an AI language model, I cannot do that."),
    rec(5, prompt="question 0"),            # same prompt and answer as r0
    rec(6, source="b"),
    rec(7, source="b", response=None),
]


@pytest.mark.parametrize("flt,row,expected", [
    (FailedFilter(), ROWS[1], (False, "failed:RateLimitError")),
    (FailedFilter(), ROWS[0], True),
    (EmptyFilter(), ROWS[2], (False, "empty")),
    (EmptyFilter(min_chars=20), ROWS[0], (False, "empty")),
    (TruncatedFilter(), ROWS[3], (False, "truncated")),
    (RefusalFilter(["as an ai language model"]), ROWS[4], (False, "refusal")),
    (RefusalFilter(["as an ai language model"]), ROWS[0], True),
])
def test_filter_verdicts(flt, row, expected):
    assert flt.filter(row) == expected


def test_duplicate_filter_is_stateful():
    f = ExactDuplicateFilter()
    assert f.filter(ROWS[0]) is True
    assert f.filter({**ROWS[5], "response": "Fine   ANSWER"}) == (False, "duplicate")


def test_funnel_counts_add_up_per_source():
    funnel = Funnel()
    kept, rejects = funnel.apply(ROWS, build_filters(CURATION))
    d = funnel.to_dict()
    assert [r["id"] for r in kept] == ["r0", "r6"]
    assert d["total"] == len(ROWS) and d["kept"] == 2
    assert d["dropped"] == {"duplicate": 1, "empty": 2, "failed:RateLimitError": 1, "refusal": 1, "truncated": 1}
    for s in d["per_source"].values():
        assert s["total"] == s["kept"] + sum(s["dropped"].values())
    assert {r["drop_reason"] for r in rejects} == set(d["dropped"])
    assert "| b | 2 |" in funnel.to_markdown()


def test_disabled_filters_keep_rows():
    cfg = OmegaConf.merge(CURATION, {"drop_truncated": False, "drop_refusals": False})
    kept, _ = Funnel().apply(ROWS, build_filters(cfg))
    assert {"r3", "r4"} <= {r["id"] for r in kept}


def _collect_dir(tmp_path, rows):
    d = tmp_path / "collect"
    write_jsonl(d / "responses.jsonl", rows)
    write_manifest(d, "collect", "h", inputs={}, outputs={"responses": d / "responses.jsonl"})
    return d


def _cfg(tmp_path, input_dir):
    return validate(OmegaConf.create({
        "curation": CURATION, "curate": {"input_dir": str(input_dir)}, "logger": {},
        "paths": {"output_dir": str(tmp_path)},
    }))


def test_stage_writes_dataset_rejects_and_funnel(tmp_path):
    cdir = _collect_dir(tmp_path, ROWS)
    out = tmp_path / "curate"
    cfg = _cfg(tmp_path, cdir)
    result = run(cfg, out, Tracker(cfg, "curate", out))
    ds = datasets.load_from_disk(result["dataset"])
    assert sorted(ds["id"]) == ["r0", "r6"] and set(ds.column_names) == {"id", "prompt", "response", "source"}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) + len(ds) == len(ROWS)
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["kept"] == 2 and (out / "funnel.md").read_text().startswith("# Curation funnel")
    assert read_manifest(out, "curate")["counts"]["total"] == len(ROWS)


def test_stage_names_file_and_line_of_a_malformed_record(tmp_path):
    cdir = _collect_dir(tmp_path, ROWS[:2])
    with (cdir / "responses.jsonl").open("a") as f:
        f.write('{"id": "x", "prompt": "p"}\n')
    cfg = _cfg(tmp_path, cdir)
    with pytest.raises(JsonlError, match=r"responses\.jsonl:3: missing field"):
        run(cfg, tmp_path / "curate", Tracker(cfg, "curate", tmp_path / "curate"))
