"""Batch mode: the OpenAI Batch API (half price) through the same cache, ledger and failure records.

Rounds: write request files within the API's limits (requests and bytes per file), upload, create batches,
poll them with a progress bar, download output and error files, and map every line back to its request by
custom_id (= the cache key). Expired, cancelled, 429 and 5xx lines are sent again in the next round, and only
they. Every uploaded file and created batch is recorded in the cache before the next step, so a killed run
resumes by its saved batch ids: nothing is uploaded twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from gpt4all.collect.cache import AnswerCache
from gpt4all.collect.client import EmptyAnswer, error_record
from gpt4all.collect.cost import Ledger
from gpt4all.collect.plan import Request, generation_params

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")
RESEND_CODES = ("batch_expired", "batch_cancelled")


def request_line(req: Request, teacher: Any) -> bytes:
    body = {"model": teacher.model, "messages": req.messages, **generation_params(teacher)}
    return (json.dumps({"custom_id": req.key, "method": "POST", "url": ENDPOINT, "body": body},
                       ensure_ascii=False) + "\n").encode()


def request_files(requests: list[Request], teacher: Any, max_requests: int, max_bytes: int) -> Iterator[tuple[list[str], bytes]]:
    """(keys, file content) chunks, each within max_requests lines and max_bytes bytes."""
    keys: list[str] = []
    buf: list[bytes] = []
    size = 0
    for req in requests:
        line = request_line(req, teacher)
        if len(line) > max_bytes:
            raise ValueError(f"one batch request line is {len(line)} bytes, over collect.batch.max_file_bytes={max_bytes}")
        if keys and (len(keys) >= max_requests or size + len(line) > max_bytes):
            yield keys, b"".join(buf)
            keys, buf, size = [], [], 0
        keys.append(req.key)
        buf.append(line)
        size += len(line)
    if keys:
        yield keys, b"".join(buf)


class BatchCollector:
    """Runs rounds of batches until every request is answered, finally failed, or max_rounds is reached."""

    def __init__(self, client: openai.AsyncOpenAI, teacher: Any, cache: AnswerCache, ledger: Ledger, bcfg: Any,
                 progress: bool = True, on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.client, self.teacher, self.cache, self.ledger, self.cfg = client, teacher, cache, ledger, bcfg
        self.max_attempts = teacher.max_retries + 1
        self.final: set[str] = set()  # failed for good in this run
        self.progress, self.on_progress = progress, on_progress
        self.files_dir = cache.dir / "batches"
        self.files_dir.mkdir(exist_ok=True)

    async def run(self, requests: list[Request]) -> dict[str, int]:
        keys = [r.key for r in requests]
        rounds = uploads = 0
        while True:
            open_batches = self.cache.open_batches()  # includes a killed run's batches
            answered = self.cache.answered_keys(keys)
            pending = self.cache.pending_in_batches()
            skip = answered | pending | self.final
            todo = [r for r in requests if r.key not in skip]
            if not open_batches and (not todo or rounds >= self.cfg.max_rounds):
                break
            if todo and rounds < self.cfg.max_rounds:
                rounds += 1
                uploads += await self.submit(todo, rounds)
            await self.poll()
        return {"batch_rounds": rounds, "batch_uploads": uploads}

    async def submit(self, todo: list[Request], round_no: int) -> int:
        n = 0
        for i, (keys, data) in enumerate(request_files(todo, self.teacher, self.cfg.max_requests_per_file,
                                                       self.cfg.max_file_bytes)):
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-r{round_no}-{i:04d}-{os.getpid()}"
            path = self.files_dir / f"{name}.jsonl"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            f = await self.client.files.create(file=(path.name, data), purpose="batch")
            self.cache.add_batch(name, keys, f.id)
            n += 1
            log.info("uploaded %s (%d requests, %.1f MB) as %s", path.name, len(keys), len(data) / 1e6, f.id)
        return n

    async def _create(self, b: dict[str, Any]) -> None:
        batch = await self.client.batches.create(input_file_id=b["input_file_id"], endpoint=ENDPOINT,
                                                 completion_window=self.cfg.completion_window,
                                                 metadata={"gpt4all_lab": b["name"]})
        self.cache.set_batch(b["name"], "submitted", batch.id)
        b.update(batch_id=batch.id, state="submitted")

    async def poll(self) -> None:
        """Create batches not yet created, then poll every open batch until it ends, collecting each."""
        open_batches = self.cache.open_batches()
        for b in open_batches:
            if b["state"] == "uploaded":
                await self._create(b)
        bar = tqdm(total=0, desc="batch", unit="req", disable=not self.progress)
        try:
            while open_batches:
                done, total, still = 0, 0, []
                for b in open_batches:
                    batch = await self.client.batches.retrieve(b["batch_id"])
                    counts = batch.request_counts
                    total += counts.total if counts else 0
                    done += (counts.completed + counts.failed) if counts else 0
                    if batch.status in TERMINAL:
                        await self.collect(b["name"], batch)
                    else:
                        still.append(b)
                bar.total, bar.n = total, done
                bar.set_postfix({"batches": len(still), **self.ledger.postfix()}, refresh=True)
                open_batches = still
                if self.on_progress:
                    self.on_progress({**self.ledger.snapshot(), "open_batches": len(still), "batch_lines_done": done})
                if still:
                    await asyncio.sleep(self.cfg.poll_interval_s)
        finally:
            bar.close()

    async def _download(self, file_id: str | None, path: Path) -> list[dict[str, Any]]:
        if not file_id:
            return []
        data = (await self.client.files.content(file_id)).content
        path.write_bytes(data)
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    async def collect(self, name: str, batch: Any) -> None:
        """Map each output and error line back to its request; lines the batch never reached are sent again."""
        keys = set(self.cache.batch_keys(name))
        lines = await self._download(batch.output_file_id, self.files_dir / f"{name}.output.jsonl")
        lines += await self._download(batch.error_file_id, self.files_dir / f"{name}.errors.jsonl")
        seen: set[str] = set()
        for line in lines:
            key = line.get("custom_id")
            if key not in keys or key in seen:
                log.warning("batch %s: ignoring line with unknown or repeated custom_id %r", name, key)
                continue
            seen.add(key)
            self._record(key, line)
        reason = "; ".join(e.message or "" for e in (batch.errors.data or [])) if batch.errors else ""
        for key in keys - seen:  # the batch ended (expired, failed, cancelled) before reaching these
            self._fail(key, {"type": "BatchNotRun", "status": None, "message": f"batch {batch.status}: {reason}"[:500],
                             "attempts": 1}, resend=batch.status != "failed")
        self.cache.set_batch(name, "collected")
        self.cache.release_items(keys)
        log.info("batch %s %s: %d lines back of %d", batch.id, batch.status, len(seen), len(keys))

    def _record(self, key: str, line: dict[str, Any]) -> None:
        resp, err = line.get("response") or {}, line.get("error")
        status = resp.get("status_code")
        body = resp.get("body") or {}
        if err or status != 200:
            code = (err or {}).get("code") or (body.get("error") or {}).get("type")
            message = (err or {}).get("message") or (body.get("error") or {}).get("message") or ""
            self._fail(key, {"type": code or "BatchLineError", "status": status, "message": message[:500], "attempts": 1},
                       resend=code in RESEND_CODES or status in (429, 500, 502, 503, 504))
            return
        choice = body["choices"][0]
        content = (choice.get("message") or {}).get("content")
        if not (content or "").strip():
            self._fail(key, error_record(EmptyAnswer("empty content in batch output"), 1), resend=True)
            return
        usage = body.get("usage") or {}
        usage = {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}
        cost = self.ledger.add(usage)
        rec = {"model": self.teacher.model, "mode": "batch", "response": content,
               "finish_reason": choice.get("finish_reason"), "usage": usage, "error": None, "attempts": 1,
               "cost_usd": round(cost, 8), "latency_s": None}
        self.cache.put(key, rec, answered=True, attempts=1)

    def _fail(self, key: str, error: dict[str, Any], resend: bool) -> None:
        """A failed line: committed with its reason; sent again next round unless final or out of attempts."""
        self.ledger.errors += 1
        rec = {"model": self.teacher.model, "mode": "batch", "response": None, "finish_reason": None, "usage": None,
               "error": error, "cost_usd": 0.0, "latency_s": None}
        self.cache.put(key, rec, answered=False, attempts=1)
        attempts = self.cache.get_many([key])[key][2]
        if not resend or attempts >= self.max_attempts:
            self.final.add(key)
