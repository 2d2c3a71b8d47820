"""Row filters: each is a tiny class, `filter(row) -> True | (False, reason)`, built from a `_target_` node.

A row is a dict with the collect record's fields (id, source, prompt, response, finish_reason, error, ...).
Filters that need every row at once (de-duplication) live in gpt4all.curate.dedup.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Any

Row = dict[str, Any]
Verdict = bool | tuple[bool, str]

# Tokenizer-free token count: words, numbers and single punctuation marks. It tracks BPE counts of English
# prose within about 25 % (a BPE token is about 0.75 words) at about 1 us per 100 characters.
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MOJIBAKE = ("\ufffd", "Ã©", "Ã¨", "Ã¢", "â€™", "â€œ", "â€", "Ã¶", "Ã¼")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed: what 'the same answer' means for exact de-duplication and echo."""
    return " ".join(text.lower().split())


def response_text(row: Row) -> str:
    text = row.get("response")
    return text if isinstance(text, str) else ""


class Filter:
    """Base class: subclasses return True to keep a row, or (False, reason) to drop it.

    `name` is the filter's key in `curation.filters` (set when the chain is built); reasons are short and
    stable (`refusal`, `truncated:length`), so the funnel can count them.
    """

    name = "filter"

    def filter(self, row: Row) -> Verdict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class FailedFilter(Filter):
    """The request failed (API error, timeout): `error` is set."""

    name = "failed"

    def filter(self, row: Row) -> Verdict:
        err = row.get("error")
        if err:
            kind = err.get("type", "error") if isinstance(err, dict) else "error"
            return False, f"failed:{kind}"
        return True


class EmptyFilter(Filter):
    """The answer is missing, not a string, or shorter than min_chars after stripping."""

    name = "empty"

    def __init__(self, min_chars: int = 1):
        self.min_chars = min_chars

    def filter(self, row: Row) -> Verdict:
        return (False, "empty") if len(response_text(row).strip()) < self.min_chars else True


class TruncatedFilter(Filter):
    """The answer hit max_tokens (finish_reason 'length') or left a code fence open."""

    name = "truncated"

    def __init__(self, finish_reasons: Iterable[str] = ("length",), check_code_fences: bool = True):
        self.finish_reasons = set(finish_reasons)
        self.check_code_fences = check_code_fences

    def filter(self, row: Row) -> Verdict:
        if row.get("finish_reason") in self.finish_reasons:
            return False, f"truncated:{row['finish_reason']}"
        if self.check_code_fences and response_text(row).count("```") % 2:
            return False, "truncated:code_fence"
        return True


class RefusalFilter(Filter):
    """The answer refuses or hedges ("As an AI language model, I cannot ..."): any phrase, case-insensitive."""

    name = "refusal"

    def __init__(self, phrases: Iterable[str]):
        self.phrases = [p.lower() for p in phrases]
        if not self.phrases:
            raise ValueError("phrases is empty: give at least one refusal phrase")

    def filter(self, row: Row) -> Verdict:
        text = response_text(row).lower()
        return (False, "refusal") if any(p in text for p in self.phrases) else True


class MalformedFilter(Filter):
    """Broken encoding (mojibake, U+FFFD, control characters), degenerate repetition, or an echo of the prompt.

    Repetition is measured by zlib: an answer of at least `min_chars_repetition` characters that compresses
    more than `max_compression` times is a loop ("the the the ..."); ordinary prose compresses 2-3x, code 3-4x.
    """

    name = "malformed"

    def __init__(self, max_compression: float = 6.0, min_chars_repetition: int = 200, max_repeated_line: int = 8,
                 check_encoding: bool = True, check_echo: bool = True, echo_min_chars: int = 20):
        self.max_compression = max_compression
        self.min_chars_repetition = min_chars_repetition
        self.max_repeated_line = max_repeated_line
        self.check_encoding = check_encoding
        self.check_echo = check_echo
        self.echo_min_chars = echo_min_chars

    def filter(self, row: Row) -> Verdict:
        text = response_text(row)
        if self.check_encoding and (any(m in text for m in MOJIBAKE) or CONTROL_RE.search(text)):
            return False, "malformed:encoding"
        if len(text) >= self.min_chars_repetition:
            raw = text.encode("utf-8", "replace")
            if len(raw) / len(zlib.compress(raw, 1)) > self.max_compression:
                return False, "malformed:repetition"
            lines = [ln for ln in text.splitlines() if len(ln.strip()) > 3]
            if len(lines) > self.max_repeated_line and len(lines) - len(set(lines)) >= self.max_repeated_line:
                return False, "malformed:repetition"
        if self.check_echo:
            prompt, answer = normalize(str(row.get("prompt") or "")), normalize(text)
            if len(prompt) >= self.echo_min_chars and answer.startswith(prompt) and len(answer) < 1.1 * len(prompt):
                return False, "malformed:prompt_echo"
        return True


class LengthFilter(Filter):
    """Answer (and optionally prompt) length bounds in tokens.

    Tokens are counted without a tokenizer by default (TOKEN_RE: words and punctuation marks), which is fast
    and model-independent; `tokenizer: model` counts with the configured model's tokenizer instead (exact for
    the student's context window, about 20x slower), loaded through gpt4all.core.models.load_tokenizer.
    """

    name = "length"

    def __init__(self, min_tokens: int = 1, max_tokens: int | None = None, max_prompt_tokens: int | None = None,
                 tokenizer: str = "regex", model: Any = None, cache_dir: str | None = None):
        if tokenizer not in ("regex", "model"):
            raise ValueError(f"tokenizer must be 'regex' or 'model', got {tokenizer!r}")
        self.min_tokens, self.max_tokens, self.max_prompt_tokens = min_tokens, max_tokens, max_prompt_tokens
        self.tokenizer, self.model, self.cache_dir = tokenizer, model, cache_dir
        self._tok: Any = None

    def count(self, text: str) -> int:
        if self.tokenizer == "regex":
            return len(TOKEN_RE.findall(text))
        if self._tok is None:
            from gpt4all.core.models import load_tokenizer

            self._tok = load_tokenizer(self.model, self.cache_dir)
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def filter(self, row: Row) -> Verdict:
        n = self.count(response_text(row))
        if n < self.min_tokens:
            return False, "length:too_short"
        if self.max_tokens is not None and n > self.max_tokens:
            return False, "length:too_long"
        if self.max_prompt_tokens is not None and self.count(str(row.get("prompt") or "")) > self.max_prompt_tokens:
            return False, "length:prompt_too_long"
        return True

    def __getstate__(self) -> dict[str, Any]:  # the tokenizer is re-loaded in each worker process
        return {**self.__dict__, "_tok": None}


class LanguageFilter(Filter):
    """Keep answers in the given languages (langdetect, seeded; about 5 ms a row, so off by default)."""

    name = "language"

    def __init__(self, languages: Iterable[str] = ("en",), min_chars: int = 20, field: str = "response"):
        self.languages, self.min_chars, self.field = set(languages), min_chars, field

    def filter(self, row: Row) -> Verdict:
        from langdetect import DetectorFactory, LangDetectException, detect

        text = row.get(self.field)
        if not isinstance(text, str) or len(text.strip()) < self.min_chars:
            return True  # too short to tell: the empty/length filters decide
        DetectorFactory.seed = 0
        try:
            lang = detect(text[:2000])
        except LangDetectException:  # no letters to judge (symbols, digits): dropped and counted, never kept unseen
            return False, "language:undetected"
        return True if lang in self.languages else (False, f"language:{lang}")
