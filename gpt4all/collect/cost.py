"""Prices, token estimates and the running cost ledger (tokens and dollars so far)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """Dollars per 1K input and output tokens for one model and mode (online or batch)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


def price_for(pricing: Any, model: str, mode: str = "online") -> Price:
    """The model's price from `collect.pricing` (batch mode: times pricing.batch_discount).

    A model missing from the table is priced at 0 with a warning (a local or self-hosted teacher).
    """
    table: Mapping[str, Any] = pricing.models or {}
    row = table.get(model)
    if row is None:
        if mode == "online":
            log.warning("no price for model %r in collect.pricing.models: its cost is reported as $0", model)
        return Price(known=False)
    factor = pricing.batch_discount if mode == "batch" else 1.0
    return Price(row.input_per_1k * factor, row.output_per_1k * factor)


def estimate_tokens(text: str) -> int:
    """About 4 characters a token: the rate limiter's cheap bound, and the named fallback of `token_counter`."""
    return max(1, (len(text) + 3) // 4)


@dataclass(frozen=True)
class TokenCounter:
    """How prompt tokens are counted: `method` names the tokenizer, `fallback` why none could be used."""

    method: str
    count: Callable[[str], int]
    fallback: str | None = None


def token_counter(teacher: Any) -> TokenCounter:
    """The teacher model's own tokenizer when it is known: the local GGUF's (teacher.server) or tiktoken's
    encoding for an OpenAI model name. Otherwise about 4 characters a token, and the log says why."""
    model = str(teacher.model)
    if teacher.get("server") is not None:
        try:
            from gpt4all.core.llamacpp import Llama
            from gpt4all.core.models import resolve_gguf

            path = Path(resolve_gguf(teacher.server.get("model_path")))
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
            return TokenCounter(f"gguf:{path.name}", lambda t: len(llm.tokenize(t.encode(), add_bos=False, special=False)))
        except Exception as err:  # noqa: BLE001 - any load failure falls back, named
            reason = f"the local GGUF's tokenizer could not be loaded ({type(err).__name__}: {str(err)[:200]})"
    else:
        try:
            import tiktoken

            enc = tiktoken.encoding_for_model(model)
            return TokenCounter(f"tiktoken:{enc.name}", lambda t: len(enc.encode(t, disallowed_special=())))
        except KeyError:
            reason = f"tiktoken has no tokenizer for model {model!r}"
        except Exception as err:  # noqa: BLE001 - offline: tiktoken cannot fetch its encoding file
            reason = f"tiktoken could not load the tokenizer of {model!r} ({type(err).__name__}: {str(err)[:200]})"
    log.warning("token count for %r: %s; counting about 4 characters a token instead (chars/4)", model, reason)
    return TokenCounter("chars/4", estimate_tokens, reason)


@dataclass
class Ledger:
    """Tokens and dollars spent so far in this run (cache hits cost nothing now)."""

    price: Price
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, usage: Mapping[str, Any] | None) -> float:
        """Count one delivered answer; returns its cost."""
        self.requests += 1
        p, c = int((usage or {}).get("prompt_tokens") or 0), int((usage or {}).get("completion_tokens") or 0)
        self.prompt_tokens += p
        self.completion_tokens += c
        return self.price.cost(p, c)

    @property
    def cost_usd(self) -> float:
        return self.price.cost(self.prompt_tokens, self.completion_tokens)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens = self.prompt_tokens + self.completion_tokens
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "requests_per_s": round(self.requests / elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1),
        }

    def postfix(self) -> dict[str, str]:
        """The progress bar's live fields."""
        s = self.snapshot()
        return {"req/s": f"{s['requests_per_s']:.1f}", "tok/s": f"{s['tokens_per_s']:.0f}",
                "err": str(self.errors), "$": f"{self.cost_usd:.4f}"}
