"""Send prompts to an OpenAI-compatible chat endpoint with bounded concurrency; one JSONL record per prompt."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from gpt4all.collect.sources import Prompt
from gpt4all.core.jsonl import JsonlAppender

log = logging.getLogger(__name__)

LOCAL_PLACEHOLDER_KEY = "sk-no-key-needed"


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


def _error_record(err: BaseException) -> dict[str, Any]:
    return {
        "type": type(err).__name__,
        "status": getattr(err, "status_code", None),
        "message": str(err)[:500],
    }


async def _ask(client: openai.AsyncOpenAI, teacher: Any, p: Prompt) -> dict[str, Any]:
    messages = ([{"role": "system", "content": teacher.system_prompt}] if teacher.system_prompt else []) + [
        {"role": "user", "content": p.prompt}
    ]
    rec: dict[str, Any] = {"id": p.id, "source": p.source, "prompt": p.prompt, "model": teacher.model}
    start = time.perf_counter()
    try:
        resp = await client.chat.completions.create(
            model=teacher.model,
            messages=messages,
            temperature=teacher.temperature,
            top_p=teacher.top_p,
            max_tokens=teacher.max_tokens,
        )
        choice = resp.choices[0]
        usage = resp.usage
        rec.update(
            response=choice.message.content,
            finish_reason=choice.finish_reason,
            usage={"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else None,
            error=None,
        )
    except (openai.APIError, asyncio.TimeoutError, ValueError) as err:
        rec.update(response=None, finish_reason=None, usage=None, error=_error_record(err))
    rec["latency_s"] = round(time.perf_counter() - start, 3)
    return rec


async def check_endpoint(client: openai.AsyncOpenAI, base_url: str) -> None:
    """Fail fast with a clear message when nothing answers at base_url."""
    try:
        await client.with_options(timeout=10, max_retries=1).models.list()
    except openai.APIConnectionError as err:
        raise ConnectionError(f"teacher endpoint {base_url} is unreachable: {err}") from None
    except openai.APIStatusError:
        pass  # some gateways do not serve /models; the chat requests will tell


async def collect(prompts: list[Prompt], teacher: Any, base_url: str | None, out_path: Path, progress: bool = True) -> dict[str, Any]:
    """Ask the teacher every prompt; append each record to out_path as it arrives. Returns counts and tokens."""
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key_for(teacher, base_url), timeout=teacher.timeout_s, max_retries=teacher.max_retries
    )
    await check_endpoint(client, str(client.base_url))
    sem = asyncio.Semaphore(teacher.concurrency)
    status: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    bar = tqdm(total=len(prompts), desc="collect", unit="prompt", disable=not progress)

    async def one(p: Prompt, sink: JsonlAppender) -> None:
        async with sem:
            rec = await _ask(client, teacher, p)
        sink.write(rec)
        status["failed" if rec["error"] else "answered"] += 1
        for k, v in (rec["usage"] or {}).items():
            tokens[k] += v or 0
        bar.update(1)
        bar.set_postfix(ok=status["answered"], failed=status["failed"], out_tokens=tokens["completion_tokens"])

    start = time.perf_counter()
    try:
        with JsonlAppender(out_path) as sink:
            await asyncio.gather(*(one(p, sink) for p in prompts))
    finally:
        bar.close()
        await client.close()
    elapsed = time.perf_counter() - start
    return {
        "prompts": len(prompts),
        "answered": status["answered"],
        "failed": status["failed"],
        "prompt_tokens": tokens["prompt_tokens"],
        "completion_tokens": tokens["completion_tokens"],
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(prompts) / elapsed, 3) if elapsed else 0.0,
    }
