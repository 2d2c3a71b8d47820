"""Compatibility checks of GGUF metadata: a file llama.cpp, the GPT4All desktop app and ollama can load and that
stops at the right token. Run on the metadata source before writing, and on the written file after."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gguf

from gpt4all.core.template import render_prompt

REQUIRED_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id")
# tokenizer.ggml.pre values llama.cpp builds older than the `smollm` name (2024-11) do not know -> same rule
PRE_TOKENIZER_FALLBACK = {"smollm": "starcoder"}


class GGUFCompatibilityError(ValueError):
    """A GGUF lacks (or would lack) what chat front-ends need; the message names the file and key."""


def _value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def open_reader(path: str | Path) -> gguf.GGUFReader:
    """GGUFReader of a file, cached: parsing a 49k-token vocabulary takes seconds."""
    return _reader(str(Path(path).resolve()), Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _reader(path: str, mtime_ns: int) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def check_metadata(path: str | Path, template: Any = None, require_chat_template: bool = True) -> dict[str, Any]:
    """Check a GGUF's tokenizer, special tokens and chat template; return what was found.

    Fails when: a tokenizer key is missing; bos/eos ids fall outside the vocabulary; the chat template is
    missing (when required); or the training template disagrees with it: the chat template's rendering of one
    user turn must end with the training prompt, and the training response suffix must start with a token the
    runtime stops on (the eos token, or the template's end-of-turn token such as <|im_end|>).
    """
    path = Path(path)
    reader = open_reader(path)
    missing = [k for k in REQUIRED_KEYS if k not in reader.fields]
    if missing:
        raise GGUFCompatibilityError(f"{path}: missing {', '.join(missing)}: the file would have no usable tokenizer")
    tokens = list(_value(reader, "tokenizer.ggml.tokens"))
    info: dict[str, Any] = {"vocab": len(tokens), "tokenizer": _value(reader, "tokenizer.ggml.model"),
                            "pre": _value(reader, "tokenizer.ggml.pre")}
    for name in ("bos", "eos", "eot", "padding"):
        tid = _value(reader, f"tokenizer.ggml.{name}_token_id")
        if tid is None:
            continue
        if not 0 <= int(tid) < len(tokens):
            raise GGUFCompatibilityError(f"{path}: tokenizer.ggml.{name}_token_id={tid} outside a {len(tokens)}-token vocab")
        info[name] = tokens[int(tid)]
    chat = _value(reader, "tokenizer.chat_template")
    info["chat_template"] = bool(chat)
    if not chat:
        if require_chat_template:
            raise GGUFCompatibilityError(
                f"{path}: no tokenizer.chat_template: chat front-ends (GPT4All, ollama, llama.cpp's chat) would fall "
                "back to a wrong format; set quant.require_chat_template=false to write it anyway")
        return info
    if template is not None:
        _check_template(path, chat, template, info, set(tokens))
    return info


def _check_template(path: Path, chat: str, template: Any, info: dict[str, Any], vocab: set[str]) -> None:
    import jinja2

    msg = "Name three primary colours."
    try:
        rendered = jinja2.Environment().from_string(chat).render(
            messages=[{"role": "user", "content": msg}], add_generation_prompt=True,
            bos_token=info.get("bos", ""), eos_token=info.get("eos", ""))
    except jinja2.TemplateError as err:
        raise GGUFCompatibilityError(f"{path}: tokenizer.chat_template does not render: {err}") from None
    prompt = render_prompt(template, msg)
    if not rendered.endswith(prompt):
        raise GGUFCompatibilityError(
            f"{path}: the chat template renders a user turn as {rendered[-len(prompt) - 20:]!r}, but the model was "
            f"trained on {prompt!r} (model.template.prompt): chat answers would not match training")
    suffix = str(template.response_suffix).strip()
    stops = {info.get("eos"), info.get("eot")} - {None}
    stop = next((t for t in sorted(vocab, key=len, reverse=True) if t and suffix.startswith(t) and
                 (t in stops or t in chat)), None)
    if suffix and stop is None:
        raise GGUFCompatibilityError(
            f"{path}: the response suffix {suffix!r} starts with no stop token (eos {info.get('eos')!r}): "
            "generation would not stop at the end of an answer")
    info["stop_token"] = stop


def check_written(path: str | Path, hf_tokenizer_dir: str | Path | None = None,
                  expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the written file's vocabulary in llama.cpp (fails on an unknown pre-tokenizer), check it kept the chat
    template and the eos token of `expect` (check_metadata's result for the source), and that it tokenizes
    like the HF tokenizer the model was trained with."""
    from gpt4all.core.llamacpp import Llama

    path = Path(path)
    try:
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except Exception as err:  # noqa: BLE001 (llama_cpp raises ValueError or RuntimeError)
        raise GGUFCompatibilityError(f"{path}: llama.cpp cannot load it: {err}") from None
    try:
        sample = "<|im_start|>user\nHello, world! 1234 \u00e9t\u00e9 def f(x):\n    return x<|im_end|>\n"
        ids = llm.tokenize(sample.encode(), add_bos=False, special=True)
        eos = llm.token_eos()
        if eos < 0:
            raise GGUFCompatibilityError(f"{path}: llama.cpp reports no eos token")
        if expect:
            eos_text = llm.detokenize([eos], special=True).decode(errors="replace")
            if expect.get("eos") is not None and eos_text != expect["eos"]:
                raise GGUFCompatibilityError(f"{path}: eos token {eos_text!r}, the source has {expect['eos']!r}")
            if expect.get("chat_template") and not llm.metadata.get("tokenizer.chat_template"):
                raise GGUFCompatibilityError(f"{path}: tokenizer.chat_template was lost in the export")
        if hf_tokenizer_dir is not None:
            from transformers import AutoTokenizer

            ref = AutoTokenizer.from_pretrained(str(hf_tokenizer_dir)).encode(sample, add_special_tokens=False)
            if list(ids) != list(ref):
                raise GGUFCompatibilityError(
                    f"{path}: llama.cpp tokenizes a sample as {list(ids)[:12]}..., the HF tokenizer of "
                    f"{hf_tokenizer_dir} as {list(ref)[:12]}...: the tokenizer metadata does not match the model")
        return {"eos_id": eos, "sample_tokens": len(ids)}
    finally:
        llm.close()
