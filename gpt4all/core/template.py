"""The prompt template shared by training and evaluation (config node `model.template`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

IGNORE_INDEX = -100


def _field(template: Any, name: str) -> str:
    """A template field from a config node / object (attribute) or a plain dict (as a manifest records it)."""
    return str(template[name] if isinstance(template, dict) else getattr(template, name))


def render_prompt(template: Any, prompt: str) -> str:
    """The text the model sees before its answer, e.g. ChatML's user turn plus the assistant header."""
    return _field(template, "prompt").replace("{prompt}", prompt)


TRUNCATIONS = ("prompt_left", "gpt4all_2023")


def check_truncation(truncation: str) -> str:
    """`truncation` if it names a rule of `encode_pair`, else a ValueError naming train.truncation."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"train.truncation must be one of {', '.join(TRUNCATIONS)}; got {truncation!r}")
    return truncation


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
    Truncation (`train.truncation=prompt_left`), when prompt + response exceed `max_length`: the prompt is cut
    from the left; the response is kept whole when it fits and cut from the right otherwise. (`gpt4all_2023`,
    the original training code's token stream, is gpt4all.train.data.encode_gpt4all_2023.)
    """
    prompt_ids = list(encode(render_prompt(template, prompt)))
    text = response + (_field(template, "response_suffix") if add_suffix else "")
    response_ids = list(encode(text))[:max_length - 1]
    keep_prompt = max(1, max_length - len(response_ids))
    prompt_ids = prompt_ids[-keep_prompt:]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return ids, labels


EOS = "{eos}"  # placeholder for the tokenizer's eos token in `response_suffix` (text templates)
STYLES = ("chat", "text", "auto")
_USER, _ASSISTANT = "\x00GPT4ALL_USER\x00", "\x00GPT4ALL_ASSISTANT\x00"


def resolve_template(template: Any, tokenizer: Any) -> dict[str, str]:
    """The plain `{prompt, response_suffix}` strings that `render_prompt` / `encode_pair` use.

    `template.style`: `auto` is `chat` when the tokenizer has a chat template, else `text`; `chat` renders the tokenizer's own chat template (one user turn, optional
    `template.system` message) and splits it around the turn contents; `text` takes `template.prompt` and
    `template.response_suffix` as given. `{eos}` in either is replaced by the tokenizer's eos token. The result
    is what a train manifest records, so later stages need no tokenizer to rebuild the prompt.
    """
    style = str(getattr(template, "style", None) or "text")
    if style not in STYLES:
        raise ValueError(f"model.template.style must be one of {', '.join(STYLES)}; got {style!r}")
    eos = str(getattr(tokenizer, "eos_token", None) or "")
    if style == "auto":
        style = "chat" if getattr(tokenizer, "chat_template", None) else "text"
    if style == "text":
        return {"prompt": str(template.prompt).replace(EOS, eos),
                "response_suffix": str(template.response_suffix).replace(EOS, eos)}
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "model.template.style=chat but the tokenizer has no chat template (a base model?): "
            "use a text template, e.g. template=alpaca or template=gpt4all_2023"
        )
    system = getattr(template, "system", None)
    turns = ([{"role": "system", "content": str(system)}] if system else []) + [{"role": "user", "content": _USER}]
    head = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": _ASSISTANT}], tokenize=False)
    if head.count(_USER) != 1 or not full.startswith(head) or full.count(_ASSISTANT) != 1:
        raise ValueError("the tokenizer's chat template does not render a single user turn as a prefix of the "
                         "conversation; use model.template.style=text with explicit strings")
    return {"prompt": head.replace(_USER, "{prompt}"), "response_suffix": full.split(_ASSISTANT, 1)[1]}
