"""A fault-injecting OpenAI-compatible server (chat completions, files, batches) for tests and benchmarks.

Real HTTP (aiohttp) on 127.0.0.1. Faults are drawn per request at configurable rates: 429 with Retry-After,
500, a slow answer past the client's timeout, malformed JSON, empty content. Every request is logged with its
outcome; a response is logged `answered` only if the client was still connected when it was sent.

In a test: `with FakeOpenAI(latency_s=0.01, faults=Faults(rate_429=0.1)) as srv: ... srv.base_url, srv.log`.
Standalone (benchmarks): `python -m gpt4all.collect.testing_server --latency 0.1` prints its base_url.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

EXPIRED = "batch_expired"


@dataclass
class Faults:
    """Per-request fault rates (each in [0, 1]; drawn in this order) and their parameters."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_malformed: float = 0.0
    rate_empty: float = 0.0
    retry_after_s: float = 0.05
    slow_s: float = 2.0

    @classmethod
    def uniform(cls, total: float, **kw: Any) -> Faults:
        """`total` split evenly over the five fault kinds."""
        r = total / 5
        return cls(rate_429=r, rate_500=r, rate_slow=r, rate_malformed=r, rate_empty=r, **kw)

    def draw(self, rng: random.Random) -> str | None:
        x = rng.random()
        for name in ("429", "500", "slow", "malformed", "empty"):
            x -= getattr(self, f"rate_{name}")
            if x < 0:
                return name
        return None


@dataclass
class BatchPlan:
    """How the fake Batch API treats the next batches: polls before finishing, lines left unanswered."""

    polls_to_finish: int = 2
    expire_first_n_lines: int = 0  # a batch with more lines than this expires after answering this many
    expire_batches: int = 0  # how many batches (in creation order) expire that way
    hold: bool = False  # keep every batch in_progress until release_batches()


def answer_for(prompt: str) -> str:
    return f"Answer: {prompt[:60]}"


def _words(text: str) -> int:
    return max(1, len(text.split()))


def completion(body: dict[str, Any], content: str | None) -> dict[str, Any]:
    prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": _words(prompt), "completion_tokens": _words(content or ""),
                  "total_tokens": _words(prompt) + _words(content or "")},
    }


def last_user(body: dict[str, Any]) -> str:
    return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


@dataclass
class FakeOpenAI:
    """The server; `log` holds one dict per chat request: prompt, outcome, auth header seen, time."""

    latency_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    batch: BatchPlan = field(default_factory=BatchPlan)
    seed: int = 0
    hold_after: int | None = None  # after this many answers, hold further chat requests until release()
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self.auth_headers: set[str] = set()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.uploads: list[str] = []  # file ids, in upload order
        self._rng = random.Random(self.seed)
        self._answered = 0
        self.waiting = 0  # chat requests held by hold_after
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024**2)
        app.add_routes([
            web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/files", self.upload),
            web.get("/v1/files/{fid}/content", self.file_content),
            web.post("/v1/batches", self.create_batch),
            web.get("/v1/batches/{bid}", self.get_batch),
        ])
        return app

    async def start_async(self) -> str:
        self._released = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    def start(self) -> str:
        """Serve from a background thread; returns base_url."""
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="fake-openai")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self.base_url

    def stop(self) -> None:
        if self._loop and self._thread:
            self.release()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def release(self) -> None:
        """Let held chat requests go on (their clients may have gone: then they are logged as dropped)."""
        if self._loop and self._released:
            self._loop.call_soon_threadsafe(self._released.set)

    def release_batches(self) -> None:
        self.batch.hold = False

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- log views -------------------------------------------------------------------------------------------
    def answered(self) -> list[str]:
        """Prompts whose answer reached a connected client (chat requests and batch lines)."""
        return [r["prompt"] for r in self.log if r["outcome"] == "answered"]

    # ---- chat ------------------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "lab"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.auth_headers.add(request.headers.get("Authorization", ""))
        prompt = last_user(body)
        if self.hold_after is not None and self._answered >= self.hold_after:
            self.waiting += 1
            await self._released.wait()  # type: ignore[union-attr]
            self.waiting -= 1
        fault = self.faults.draw(self._rng)
        await asyncio.sleep(self.faults.slow_s if fault == "slow" else self.latency_s)
        rec = {"prompt": prompt, "t": time.time(), "outcome": "answered"}
        self.log.append(rec)
        if request.transport is None or request.transport.is_closing():
            rec["outcome"] = "dropped"  # the client is gone: nothing was delivered
            return web.Response(status=499)
        if fault == "429":
            rec["outcome"] = "fault:429"
            return web.json_response({"error": {"message": "rate limited", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": str(self.faults.retry_after_s)})
        if fault == "500":
            rec["outcome"] = "fault:500"
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if fault == "malformed":
            rec["outcome"] = "fault:malformed"
            return web.Response(text='{"id": "chatcmpl-x", "choices": [', content_type="application/json")
        if fault == "empty":
            rec["outcome"] = "fault:empty"
            return web.json_response(completion(body, ""))
        if fault == "slow":
            rec["outcome"] = "fault:slow"  # answered late: the client has usually timed out already
        self._answered += 1
        return web.json_response(completion(body, answer_for(prompt)))

    # ---- files and batches -----------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form["file"]
        data = f.file.read() if hasattr(f, "file") else bytes(f)  # type: ignore[union-attr]
        fid = self._store_file(data, getattr(f, "filename", "upload.jsonl"), str(form.get("purpose", "batch")))
        self.uploads.append(fid)
        return web.json_response(self.files[fid]["meta"])

    def _store_file(self, data: bytes, name: str, purpose: str) -> str:
        fid = f"file-{uuid.uuid4().hex[:16]}"
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}
        self.files[fid] = {"meta": meta, "data": data}
        return fid

    async def file_content(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["fid"])
        if f is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.Response(body=f["data"], content_type="application/octet-stream")

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return web.json_response({"error": {"message": "input file not found"}}, status=400)
        bid = f"batch_{uuid.uuid4().hex[:16]}"
        n = sum(1 for line in self.files[body["input_file_id"]]["data"].splitlines() if line.strip())
        self.batches[bid] = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(time.time()), "request_counts": {"total": n, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "_polls": 0, "_index": len(self.batches),
        }
        return web.json_response(self._public(bid))

    def _public(self, bid: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    async def get_batch(self, request: web.Request) -> web.Response:
        bid = request.match_info["bid"]
        b = self.batches.get(bid)
        if b is None:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        if b["status"] in ("validating", "in_progress") and not self.batch.hold:
            b["_polls"] += 1
            b["status"] = "in_progress"
            if b["_polls"] >= self.batch.polls_to_finish:
                self._finish(b)
        return web.json_response(self._public(bid))

    def _finish(self, b: dict[str, Any]) -> None:
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["data"].splitlines() if x.strip()]
        expire = b["_index"] < self.batch.expire_batches and len(lines) > self.batch.expire_first_n_lines
        done = lines[: self.batch.expire_first_n_lines] if expire else lines
        out, err = [], []
        for line in done:
            prompt = last_user(line["body"])
            self.log.append({"prompt": prompt, "t": time.time(), "outcome": "answered", "batch": b["id"]})
            out.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": uuid.uuid4().hex,
                                     "body": completion(line["body"], answer_for(prompt))}})
        for line in lines[len(done):]:
            err.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": EXPIRED, "message": "This request could not be executed before the "
                                                              "completion window expired."}})
        dump = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()
        b["output_file_id"] = self._store_file(dump(out), "output.jsonl", "batch_output") if out else None
        b["error_file_id"] = self._store_file(dump(err), "errors.jsonl", "batch_output") if err else None
        b["status"] = "expired" if expire else "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per chat answer")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="total fault rate, split over the five kinds")
    args = ap.parse_args(argv)
    srv = FakeOpenAI(latency_s=args.latency, faults=Faults.uniform(args.fault_rate), port=args.port)

    async def serve() -> None:
        print(await srv.start_async(), flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
