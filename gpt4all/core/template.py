"""The prompt template shared by training and evaluation (config node `model.template`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

IGNORE_INDEX = -100


def render_prompt(template: Any, prompt: str) -> str:
    """The text the model sees before its answer, e.g. ChatML's user turn plus the assistant header."""
    return str(template.prompt).replace("{prompt}", prompt)


def encode_pair(
    encode: Callable[[str], Sequence[int]],
    template: Any,
    prompt: str,
    response: str,
    max_length: int,
    add_suffix: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response and labels that are IGNORE_INDEX on the prompt.

    `encode` turns text into ids without adding special tokens (HF: `tok.encode(t, add_special_tokens=False)`,
    llama.cpp: `llm.tokenize(t.encode(), add_bos=False, special=True)`), so both backends score the same tokens.
    The prompt is cut from the left when prompt + response exceed `max_length`; the response is kept whole
    when it fits and cut from the right otherwise.
    """
    prompt_ids = list(encode(render_prompt(template, prompt)))
    text = response + (str(template.response_suffix) if add_suffix else "")
    response_ids = list(encode(text))[:max_length - 1]
    keep_prompt = max(1, max_length - len(response_ids))
    prompt_ids = prompt_ids[-keep_prompt:]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return ids, labels
