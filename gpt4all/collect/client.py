"""The online collector: AsyncOpenAI with bounded concurrency, rate limits, retries, and answers committed as they arrive.

Retries (tenacity): 429, 5xx, connection errors, timeouts, malformed JSON and empty answers are retried with
exponential backoff and jitter, waiting exactly the server's Retry-After when it sends one. Other 4xx
errors fail the prompt at once; a bad key or unknown model (401/403/404) stops the run.

Each worker claims its next request while the current one is in flight and hands every outcome to the cache's
thread (CacheWriter) before it sends its next request; the thread commits outcomes and claims together in group
commits within milliseconds, so SQLite never blocks the event loop. A kill -9 loses at most the outcomes of those
last milliseconds (asked again on resume) and leaves at most two claims per worker, which expire after their lease.

One payer per request: a worker claims a request in the cache before sending it. A request another live
collector has claimed is put aside; once the rest is done the collector waits for those answers, or takes a
claim over when its lease runs out (its owner was killed). A heartbeat renews this collector's claims.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import httpx2
import openai
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_exponential_jitter
from tqdm.auto import tqdm

from gpt4all.collect.cache import AnswerCache, Claim, Outcome
from gpt4all.collect.cost import Ledger
from gpt4all.collect.plan import Request, generation_params

log = logging.getLogger(__name__)

LOCAL_PLACEHOLDER_KEY = "sk-no-key-needed"


class EmptyAnswer(Exception):
    """The endpoint answered 200 with no content."""


def read_completion(resp: Any) -> tuple[str, str | None, dict[str, int] | None]:
    """(content, finish_reason, usage) of a chat completion's JSON; malformed or empty answers raise EmptyAnswer."""
    try:
        choice = resp["choices"][0]
        content, finish_reason = choice["message"].get("content"), choice.get("finish_reason")
        usage = resp.get("usage")
        usage = {"prompt_tokens": int(usage["prompt_tokens"]), "completion_tokens": int(usage["completion_tokens"])} \
            if usage else None
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        raise EmptyAnswer(f"malformed completion: {type(err).__name__}: {err}") from None
    if not isinstance(content, str) or not content.strip():
        raise EmptyAnswer(f"empty content (finish_reason={finish_reason})")
    return content, finish_reason, usage


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
             openai.APIResponseValidationError, json.JSONDecodeError, EmptyAnswer)
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


def api_key_for(teacher: Any, base_url: str | None) -> str:
    """The API key from the environment variable named by teacher.api_key_env (never from config).

    OpenAI itself (base_url null) needs one; a local or self-hosted endpoint gets a placeholder when unset.
    """
    env = teacher.api_key_env
    key = os.environ.get(env) if env else None
    if key:
        return key
    if base_url is None and not os.environ.get("OPENAI_BASE_URL"):
        raise RuntimeError(f"teacher '{teacher.name}' needs an API key: set the environment variable {env or 'OPENAI_API_KEY'}")
    return LOCAL_PLACEHOLDER_KEY


class PreparedAsyncOpenAI(openai.AsyncOpenAI):
    """AsyncOpenAI that builds the URL and headers of a plain JSON POST once and reuses them.

    The SDK rebuilds both for every call (URL parsing, header merging and validation): at hundreds of requests
    per second that is most of the client's CPU per request, on the one event-loop thread. Requests that
    carry pre-serialised `content` and nothing per-call (no files, query, headers, extra body, timeout) take
    the prepared path; every other request is built by the SDK as usual. Sending, errors and responses stay
    the SDK's own.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._prepared: dict[tuple[str, str], tuple[httpx2.URL, httpx2.Headers, dict[str, Any]]] = {}

    @property
    def user_agent(self) -> str:  # the SDK's own, not this subclass's name
        return super().user_agent.replace(type(self).__name__, "AsyncOpenAI", 1)

    def _idempotency_key(self) -> str:  # the SDK draws a random key per request even when no header sends it
        return super()._idempotency_key() if self._idempotency_header else ""

    def _build_request(self, options: Any, *, retries_taken: int = 0) -> httpx2.Request:
        plain = (isinstance(options.content, bytes) and not options.files and not options.params
                 and not options.headers and options.extra_json is None and retries_taken == 0
                 and isinstance(options.timeout, openai.NotGiven) and not self._idempotency_header)
        if not plain:
            return super()._build_request(options, retries_taken=retries_taken)
        key = (options.method, options.url)
        if key not in self._prepared:
            first = super()._build_request(options, retries_taken=retries_taken)
            headers = httpx2.Headers(first.headers)
            headers.pop("content-length", None)  # set per body by httpx
            self._prepared[key] = (first.url, headers, first.extensions)
        url, headers, extensions = self._prepared[key]
        return httpx2.Request(options.method, url, headers=headers, content=options.content, extensions=extensions)


HTTP_CLIENTS = {"aiohttp": openai.DefaultAioHttpClient, "httpx": openai.DefaultAsyncHttpxClient}


def make_client(teacher: Any, base_url: str | None, connections: int | None = None) -> openai.AsyncOpenAI:
    """AsyncOpenAI without its own retries (ours count attempts), a connection pool sized to the concurrency.

    teacher.http_client picks the SDK's transport: aiohttp (less CPU per request at high concurrency) or httpx.
    """
    if teacher.http_client not in HTTP_CLIENTS:
        raise ValueError(f"teacher.http_client must be one of {', '.join(HTTP_CLIENTS)}, got {teacher.http_client!r}")
    n = connections or teacher.concurrency
    limits = httpx2.Limits(max_connections=n, max_keepalive_connections=n)
    http = HTTP_CLIENTS[teacher.http_client](limits=limits, timeout=teacher.timeout_s)
    return PreparedAsyncOpenAI(base_url=base_url, api_key=api_key_for(teacher, base_url), timeout=teacher.timeout_s,
                              max_retries=0, http_client=http)


async def check_endpoint(client: openai.AsyncOpenAI) -> None:
    """Fail fast with a clear message when nothing answers at the client's base_url."""
    try:
        await client.with_options(timeout=10).models.list()
    except openai.APIConnectionError as err:
        raise ConnectionError(f"teacher endpoint {client.base_url} is unreachable: {err}") from None
    except openai.APIStatusError:
        pass  # some gateways do not serve /models; the chat requests will tell


def retry_after(err: BaseException | None) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header on an API error, if any."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if not headers:
        return None
    for name, div in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            if name in headers:
                return max(0.0, float(headers[name]) / div)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


def error_record(err: BaseException, attempts: int) -> dict[str, Any]:
    """Why a prompt failed: error type, HTTP status, message and the attempts made."""
    return {"type": type(err).__name__, "status": getattr(err, "status_code", None), "message": str(err)[:500],
            "attempts": attempts}


class CacheWriter:
    """The collector's one thread for the answer cache, so SQLite never blocks the event loop.

    Calls that arrive while a transaction runs share the next one (a group commit: a burst of answers costs one
    write). Between calls the thread renews this collector's claims every lease / 3 (its heartbeat).
    """

    def __init__(self, cache: AnswerCache, owner: str, lease_s: float):
        self.cache, self.owner, self.lease_s = cache, owner, lease_s
        self.loop = asyncio.get_running_loop()
        self.calls: queue.SimpleQueue[tuple[Outcome | None, Claim | None, asyncio.Future] | None] = queue.SimpleQueue()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._serve, name="answer-cache", daemon=True)
        self.thread.start()

    def submit(self, outcome: Outcome | None, claim: Claim | None) -> asyncio.Future:
        """One op of AnswerCache.settle_and_claim_many on the cache's thread; the future holds the claim's result.

        A failed write fails its future and every later submit and close(), awaited or not: no outcome is lost
        silently.
        """
        if self.error:
            raise self.error
        done = self.loop.create_future()
        self.calls.put((outcome, claim, done))
        return done

    def close(self) -> None:
        """Finish the calls queued so far, then stop the thread; raise the first failed write, if any."""
        self.calls.put(None)
        self.thread.join()
        if self.error:
            raise self.error

    def _serve(self) -> None:
        renewed, stop = time.monotonic(), False
        while not stop:
            batch = []
            try:  # wait for a call, then take every call queued behind it
                item = self.calls.get(timeout=self.lease_s / 3)
                while item is not None:
                    batch.append(item)
                    item = self.calls.get_nowait()
                stop = True
            except queue.Empty:
                pass
            if batch:
                try:
                    results, error = self.cache.settle_and_claim_many([(o, c) for o, c, _ in batch]), None
                except Exception as err:  # handed to every waiting worker
                    results, error = [None] * len(batch), err
                    self.error = self.error or err
                self.loop.call_soon_threadsafe(self._resolve, [f for _, _, f in batch], results, error)
            if time.monotonic() - renewed >= self.lease_s / 3:
                renewed = time.monotonic()
                try:
                    self.cache.renew_claims(self.owner, self.lease_s)
                except Exception as err:
                    log.warning("collect: could not renew this collector's claims (%s); retrying", err)

    @staticmethod
    def _resolve(futures: list[asyncio.Future], results: list[Any], error: Exception | None) -> None:
        for fut, result in zip(futures, results):
            if not fut.done():
                fut.set_exception(error) if error else fut.set_result(result)
                if error:
                    fut.exception()  # raised by submit() and close(); not also logged as never retrieved


class Collector:
    """Sends requests through `concurrency` workers; outcomes go to the cache as they arrive (see CacheWriter)."""

    def __init__(self, client: openai.AsyncOpenAI, teacher: Any, cache: AnswerCache, ledger: Ledger,
                 max_cost_usd: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
                 progress_every_s: float = 5.0, progress: bool = True, claim_lease_s: float = 30.0):
        self.client, self.teacher, self.cache, self.ledger = client, teacher, cache, ledger
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s = claim_lease_s
        self.started = time.time()
        self.by_others: set[str] = set()  # keys whose outcome another collector committed during this run
        self.taken_over: dict[str, int] = {}  # expired owner -> claims taken over
        self.params = generation_params(teacher)
        # plain values: reading a DictConfig per request costs more CPU than the HTTP call at high concurrency
        self.model, self.max_attempts, self.max_tokens = str(teacher.model), teacher.max_retries + 1, teacher.max_tokens
        self.max_cost_usd = max_cost_usd
        self.not_sent: dict[str, dict[str, Any]] = {}  # key -> reason (budget)
        self.on_progress, self.progress_every_s, self.progress = on_progress, progress_every_s, progress
        rpm, tpm = teacher.requests_per_minute, teacher.tokens_per_minute
        self.rpm = AsyncLimiter(rpm / 60, 1) if rpm else None  # per second: no minute-long burst at the start
        self.tpm = AsyncLimiter(tpm / 60, 1) if tpm else None
        self.backoff = wait_exponential_jitter(multiplier=teacher.backoff_initial_s, max=teacher.backoff_max_s,
                                               jitter=teacher.backoff_initial_s)
        self.writer: CacheWriter | None = None  # the cache's thread during run()

    def _wait(self, state: RetryCallState) -> float:
        ra = retry_after(state.outcome.exception() if state.outcome else None)
        return ra if ra is not None else self.backoff(state)

    async def _limit(self, req: Request) -> None:
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm:
            await self.tpm.acquire(min(req.input_tokens() + self.max_tokens, self.tpm.max_rate))

    def _count_error(self, state: RetryCallState) -> None:
        self.ledger.errors += 1

    async def ask(self, req: Request) -> tuple[bool, dict[str, Any], int]:
        """One request with retries: (answered, record, attempts).

        The first attempt runs outside tenacity: building and running a retry loop costs more of the event loop
        than the request itself at high concurrency, and with the workers in step every answer waits for that CPU
        of the answers ahead of it (experiments/collect_throughput). A retryable failure hands over to tenacity
        as its attempt 1, so backoff, Retry-After, counting and the attempt limit are unchanged.
        """
        attempts, start, first = 1, time.perf_counter(), None
        rec: dict[str, Any] = {"model": self.model, "mode": "online"}
        try:
            try:
                answer = await self._attempt(req)
            except RETRYABLE as err:
                first = err
            if first is not None:
                async for attempt in AsyncRetrying(
                        stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                        retry=retry_if_exception_type(RETRYABLE), before_sleep=self._count_error, reraise=True):
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        if attempts == 1:
                            raise first
                        answer = await self._attempt(req)
        except FATAL:
            raise
        except (openai.APIError, json.JSONDecodeError, EmptyAnswer) as err:
            self.ledger.errors += 1
            rec.update(response=None, finish_reason=None, usage=None, error=error_record(err, attempts))
            return False, {**rec, "latency_s": round(time.perf_counter() - start, 3), "cost_usd": 0.0}, attempts
        content, finish_reason, usage = answer
        cost = self.ledger.add(usage)
        rec.update(response=content, finish_reason=finish_reason, usage=usage, error=None,
                   attempts=attempts, cost_usd=round(cost, 8), latency_s=round(time.perf_counter() - start, 3))
        return True, rec, attempts

    async def _attempt(self, req: Request) -> tuple[str, str | None, dict[str, int] | None]:
        """One attempt: wait for the rate limits, send, read the answer (read_completion)."""
        await self._limit(req)
        # client.post with a serialised body and cast_to=object skips the SDK's per-call TypedDict transform of
        # the params and its model construction of the response, and takes PreparedAsyncOpenAI's prepared path
        # (together most of the client's CPU per request at high concurrency); the JSON is read as plain data
        resp = await self.client.post("/chat/completions", cast_to=object, content=json.dumps({
            "model": self.model, "messages": req.messages, **self.params}).encode())
        return read_completion(resp)

    def _claim(self, req: Request) -> Claim:
        return req.key, self.owner, self.lease_s, self.started

    def _over_budget(self) -> bool:
        return self.max_cost_usd is not None and self.ledger.cost_usd >= self.max_cost_usd

    async def run(self, requests: Iterable[Request], total: int) -> None:
        """Ask every request; answered and failed outcomes go to the cache as they arrive.

        Rounds: each round sends the requests this collector could claim and puts aside those another collector
        holds; the next round (after a short wait) tries those again until each is settled or claimed here.
        """
        bar = tqdm(total=total, desc="collect", unit="req", disable=not self.progress, smoothing=0.1)
        self.writer = CacheWriter(self.cache, self.owner, self.lease_s)
        # the objects alive now (modules, config, requests) live until the end: exempt them from the cyclic GC,
        # whose full scans of them would stall the event loop for tens of ms at a time (every answer waits)
        gc.freeze()
        try:
            pending, waited = list(requests), False
            while pending:
                held: dict[str, str] = {}
                await self._round(pending, bar, held)
                pending = [r for r in pending if r.key in held]
                if pending and not waited:
                    log.info("collect: %d requests are claimed by another collector (%s): waiting for their answers, "
                             "or for the claims to expire (lease %.0fs)", len(pending),
                             ", ".join(sorted(set(held.values()))), self.lease_s)
                    waited = True
                if pending:
                    await asyncio.sleep(min(1.0, self.lease_s / 4))
        finally:
            self.writer.close()  # commits already handed to the thread finish, even on an error
            self.cache.release_claims(self.owner)
            bar.close()
            gc.unfreeze()
        for owner, n in self.taken_over.items():
            log.warning("collect: took over %d requests claimed by %s, whose lease ran out (a killed collector?)",
                        n, owner)

    async def _round(self, requests: list[Request], bar: Any, held: dict[str, str]) -> None:
        queue = iter(requests)
        last = last_bar = time.monotonic()

        async def worker() -> None:
            nonlocal last, last_bar
            req = next(queue, None)
            claimed = self.writer.submit(None, self._claim(req)) if req else None  # type: ignore[union-attr]
            done = None  # this worker's last outcome
            while req is not None:
                state, other = await claimed  # type: ignore[misc]
                # while this request is in flight, the cache's thread commits the last outcome and claims the next
                nxt = next(queue, None)
                claimed = self.writer.submit(done, self._claim(nxt) if nxt else None)  # type: ignore[union-attr]
                done = None
                if self._over_budget():
                    self.not_sent[req.key] = {"type": "BudgetExceeded", "status": None, "attempts": 0,
                                              "message": f"collect.max_cost_usd={self.max_cost_usd} reached"}
                elif state == "held":
                    held[req.key], req = str(other), nxt
                    continue
                elif state == "settled":
                    self.by_others.add(req.key)
                else:
                    if other:
                        self.taken_over[other] = self.taken_over.get(other, 0) + 1
                    answered, rec, attempts = await self.ask(req)
                    done = (req.key, rec, answered, attempts)
                bar.update(1)
                if self.progress and time.monotonic() - last_bar >= 0.5:
                    last_bar = time.monotonic()
                    bar.set_postfix(self.ledger.postfix(), refresh=False)
                if self.on_progress and time.monotonic() - last >= self.progress_every_s:
                    last = time.monotonic()
                    self.on_progress(self.ledger.snapshot())
                req = nxt
            if done:
                await self.writer.submit(done, None)  # type: ignore[union-attr]

        workers = [asyncio.create_task(worker()) for _ in range(self.teacher.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
