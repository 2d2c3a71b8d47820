"""The stage cache reuses a stage only when everything it read is unchanged, and says which part changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gpt4all.core.cache as cache_mod
from gpt4all.collect.testing_server import FakeOpenAI
from gpt4all.core.cache import (
    PACKAGE_ROOT,
    DigestCache,
    StageCache,
    code_fingerprint,
    key_of,
)
from gpt4all.runs.diff import diff_parts
from gpt4all.runs.diff import main as diff_main


def parts(code: dict | None = None, digest: str = "d" * 64, ignore_code: bool = False, seed: int = 42) -> dict:
    return {"format": cache_mod.KEY_FORMAT, "stage": "collect", "config": {"teacher": {"temperature": 0.7}},
            "seed": seed, "inputs": {"data.sources.jsonl.path": {"path": "/data/x.jsonl", "digest": digest}},
            "code": code or {"version": "0.1.0", "sources": "a" * 16}, "ignore_code": ignore_code}


def finished_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "responses.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (path / "manifest.json").write_text(json.dumps({"stage": "collect", "outputs": {"responses": "responses.jsonl"}}))
    return path


def test_a_big_file_is_hashed_once_and_an_in_place_edit_is_seen(tmp_path: Path, monkeypatch):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "question {i}"}}\n' for i in range(100_000)))
    reads: list[Path] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: reads.append(p) or real(p))
    first = DigestCache(tmp_path / "c").path(data)
    assert DigestCache(tmp_path / "c").path(data) == first and len(reads) == 1  # a new process: read from the cache
    text = data.read_text()
    data.write_text(text.replace("question 5\"", "question X\""))  # same size, same path, new content
    assert data.stat().st_size == len(text)
    assert DigestCache(tmp_path / "c").path(data) != first and len(reads) == 2


def test_code_fingerprint_follows_the_stage_sources_only(tmp_path: Path):
    root = tmp_path / "gpt4all"
    for part in ("core", "data", "collect", "curate"):
        shutil.copytree(PACKAGE_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint("collect", root)
    curate_before = code_fingerprint("curate", root)
    with (root / "collect" / "stage.py").open("a") as f:
        f.write("\n# a bug fix\n")
    code_fingerprint.cache_clear()
    after = code_fingerprint("collect", root)
    assert after["sources"] != before["sources"] and after["version"] == before["version"]
    assert code_fingerprint("curate", root) == curate_before  # another stage's code does not count


def test_changed_code_forces_a_rerun_unless_ignored(tmp_path: Path):
    cache = StageCache(tmp_path / "cache")
    run = finished_run(tmp_path / "run")
    cache.store("collect", parts(), run)
    assert cache.lookup("collect", parts()) == (run, "")
    fixed = {"version": "0.1.0", "sources": "b" * 16}
    hit, why = cache.lookup("collect", parts(code=fixed))
    assert hit is None and f"code of collect changed (gpt4all-lab 0.1.0 -> 0.1.0, sources {'a' * 16} -> {'b' * 16}" in why
    cache.store("collect", parts(ignore_code=True), run)
    assert cache.lookup("collect", parts(code=fixed, ignore_code=True)) == (run, "")
    hit, why = cache.lookup("collect", parts(seed=7, digest="e" * 64))
    assert hit is None and "seed changed (42 -> 7)" in why
    assert "input file /data/x.jsonl (data.sources.jsonl.path) changed (digest dddddddd -> eeeeeeee)" in why


def test_entry_whose_run_dir_was_deleted_edited_or_half_written_is_not_reused(tmp_path: Path):
    cache = StageCache(tmp_path / "cache")
    run = finished_run(tmp_path / "run")
    key = cache.store("collect", parts(), run)
    (run / "responses.jsonl").write_text('{"prompt": "p", "response": "edited"}\n')
    hit, why = cache.lookup("collect", parts())
    assert hit is None and f"the outputs in {run} changed" in why
    (run / "manifest.json").unlink()
    hit, why = cache.lookup("collect", parts())
    assert hit is None and f"{run}, which has no manifest.json (half-written)" in why
    shutil.rmtree(run)
    hit, why = cache.lookup("collect", parts())
    assert hit is None and f"cache entry {key} points at {run}, which no longer exists" in why
    (tmp_path / "cache" / "collect" / f"{key}.json").write_text('{"run_dir": ')  # a torn write
    hit, why = cache.lookup("collect", parts())
    assert hit is None and "unreadable (half-written)" in why


def test_entry_from_an_older_version_is_not_reused(tmp_path: Path):
    cache = StageCache(tmp_path / "cache")
    run = finished_run(tmp_path / "run")
    old = {**parts(), "format": 1}
    (tmp_path / "cache" / "collect").mkdir(parents=True)
    (tmp_path / "cache" / "collect" / f"{key_of(parts())}.json").write_text(json.dumps({"run_dir": str(run)}))
    (tmp_path / "cache" / "collect" / "old.json").write_text(json.dumps({"run_dir": str(run), "parts": old}))
    hit, why = cache.lookup("collect", parts())
    assert hit is None and "older gpt4all-lab (no outputs digest)" in why
    assert "key format 1 (an older gpt4all-lab)" in cache.why_missing("collect", parts())


def pipeline(out: Path, base_url: str, prompts: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gpt4all.pipeline", "experiment=debug", f"paths.output_dir={out}", "logger=none",
           "pipeline.stages=[collect,curate]", "data/source=[jsonl]", f"data.sources.jsonl.path={prompts}",
           "teacher=openai_compatible", f"teacher.base_url={base_url}", "teacher.model=fake", "collect.progress=false",
           *extra]
    return subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})


def test_prompt_file_edited_in_place_reruns_collect_and_diff_names_it(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Explain topic number {i} in detail."}) + "\n" for i in range(6)))
    with FakeOpenAI() as srv:
        first = pipeline(tmp_path / "out", srv.base_url, prompts)
        again = pipeline(tmp_path / "out", srv.base_url, prompts)
        with prompts.open("a") as f:  # same path, new content
            f.write(json.dumps({"prompt": "A question added after the first run."}) + "\n")
        edited = pipeline(tmp_path / "out", srv.base_url, prompts)
        asked = srv.answered()
    for proc in (first, again, edited):
        assert proc.returncode == 0, proc.stdout[-3000:]
    runs = sorted((tmp_path / "out" / "pipeline").iterdir())
    summaries = [json.loads((r / "summary.json").read_text())["stages"] for r in runs]
    assert [s["collect"]["reused"] for s in summaries] == [False, True, False]
    assert [s["curate"]["reused"] for s in summaries] == [False, True, False]  # its input changed with collect
    assert "[collect] cached: reusing" in again.stdout
    assert f"[collect] re-running: input file {prompts} (data.sources.jsonl.path) changed (digest" in edited.stdout
    assert "A question added after the first run." in asked and summaries[2]["collect"]["prompts"] == 7
    manifest = json.loads((runs[2] / "collect" / "manifest.json").read_text())
    assert manifest["cache_parts"]["inputs"]["data.sources.jsonl.path"]["path"] == str(prompts)
    assert set(manifest["cache_parts"]) >= {"config", "seed", "inputs", "code"}
    changed = dict(diff_parts(runs[0], runs[2]))
    assert "data.sources.jsonl.path" in changed["collect"] and "curate.input_dir" in changed["curate"]
    assert diff_main([str(runs[0]), str(runs[2]), "--markdown"]) == 0
