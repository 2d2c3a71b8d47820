"""From prompts to requests: messages, generation parameters, cache keys, and the dry-run cost estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpt4all.collect.cache import request_key
from gpt4all.collect.cost import Price, TokenCounter, estimate_tokens
from gpt4all.collect.sources import Prompt

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message, as OpenAI counts them


@dataclass
class Request:
    """One unique request to the teacher; several prompts may share it when de-duplication is off."""

    key: str
    messages: list[dict[str, str]]
    prompts: list[Prompt] = field(default_factory=list)

    _tokens: int | None = field(default=None, repr=False)

    def input_tokens(self) -> int:
        """Estimated prompt tokens (computed once)."""
        if self._tokens is None:
            self._tokens = sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in self.messages)
        return self._tokens


def generation_params(teacher: Any) -> dict[str, Any]:
    """The generation parameters sent with every request (and hashed into its cache key)."""
    return {"temperature": float(teacher.temperature), "top_p": float(teacher.top_p), "max_tokens": int(teacher.max_tokens)}


def messages_for(teacher: Any, prompt: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": teacher.system_prompt}] if teacher.system_prompt else []
    return system + [{"role": "user", "content": prompt}]


def build_requests(prompts: list[Prompt], teacher: Any) -> list[Request]:
    """Unique requests in prompt order; each keyed by (model, generation parameters, messages)."""
    params = generation_params(teacher)
    by_key: dict[str, Request] = {}
    for p in prompts:
        messages = messages_for(teacher, p.prompt)
        key = request_key(teacher.model, params, messages)
        by_key.setdefault(key, Request(key, messages)).prompts.append(p)
    return list(by_key.values())


def estimate(requests: list[Request], output_tokens: int, online: Price, batch: Price,
             counter: TokenCounter | None = None) -> dict[str, Any]:
    """Tokens and dollars the requests would cost (output tokens per answer as given); prompt tokens counted by
    `counter` (the teacher's tokenizer), else about 4 characters a token."""
    if counter is None:
        n_in = sum(r.input_tokens() for r in requests)
    else:
        n_in = sum(counter.count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for r in requests for m in r.messages)
    n_out = output_tokens * len(requests)
    return {
        "requests": len(requests),
        "est_prompt_tokens": n_in,
        "est_completion_tokens": n_out,
        "est_cost_usd": round(online.cost(n_in, n_out), 4),
        "est_cost_usd_batch": round(batch.cost(n_in, n_out), 4),
        "price_known": online.known,
        "token_counter": counter.method if counter else "chars/4",
        "token_counter_fallback": counter.fallback if counter else "not counted with a tokenizer (not a dry run)",
    }
