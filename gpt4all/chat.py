"""`gpt4all-chat`: chat with a GGUF model on the CPU through llama.cpp, streaming tokens, in the model's own chat
template (tokenizer.chat_template in the GGUF). One-shot mode for scripts: `gpt4all-chat MODEL -p "question"`.

MODEL is a .gguf file or a quantize run dir (its GGUF, or base + LoRA GGUF for quant=gguf_lora).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from gpt4all.core.lm import Spec, resolve_run_dir


def resolve_model(path: str | Path, lora: str | None = None) -> Spec:
    """A GGUF file, or a quantize run dir holding one."""
    p = Path(path)
    if p.is_dir():
        spec = resolve_run_dir(p)
        if spec.kind != "gguf":
            raise ValueError(f"{p}: a '{spec.kind}' model; gpt4all-chat runs GGUF files (quant=gguf_* runs)")
        return spec
    if not p.is_file():
        raise FileNotFoundError(f"model not found: {p}")
    return Spec("gguf", str(p), lora=lora)


def load_chat_model(spec: Spec, n_ctx: int = 2048, n_threads: int = 1, seed: int = 0) -> Any:
    from gpt4all.core.llamacpp import Llama

    llm = Llama(model_path=spec.path, lora_path=spec.lora, n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=False)
    if not llm.metadata.get("tokenizer.chat_template"):
        raise ValueError(f"{spec.path} has no tokenizer.chat_template: re-export it with gpt4all-quantize")
    return llm


def stream_reply(llm: Any, messages: list[dict[str, str]], max_tokens: int = 256,
                 temperature: float = 0.7) -> Iterator[str]:
    """Yield the assistant's answer piece by piece (create_chat_completion with the GGUF's chat template)."""
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=temperature,
                                            stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


def reply(llm: Any, messages: list[dict[str, str]], out: TextIO, max_tokens: int, temperature: float) -> str:
    """Stream one answer to `out`, return it whole."""
    parts = []
    for piece in stream_reply(llm, messages, max_tokens, temperature):
        parts.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpt4all-chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a .gguf file or a quantize run dir")
    ap.add_argument("-p", "--prompt", help="one-shot: answer this and exit ('-' reads stdin)")
    ap.add_argument("--lora", help="a LoRA GGUF to apply to the model at load time")
    ap.add_argument("--system", help="system prompt")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 is safest on a busy 2-core CPU)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        llm = load_chat_model(resolve_model(args.model, args.lora), args.n_ctx, args.threads, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"gpt4all-chat: {err}", file=sys.stderr)
        return 2
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        if args.prompt is not None:
            prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
            reply(llm, messages + [{"role": "user", "content": prompt}], sys.stdout, args.max_tokens, args.temperature)
            return 0
        print(f"gpt4all-chat: {Path(args.model).name} (empty line or Ctrl-D to quit, /reset to clear history)",
              file=sys.stderr)
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                break
            if line == "/reset":
                messages = messages[:1] if args.system else []
                continue
            messages.append({"role": "user", "content": line})
            start = time.perf_counter()
            answer = reply(llm, messages, sys.stdout, args.max_tokens, args.temperature)
            messages.append({"role": "assistant", "content": answer})
            print(f"[{len(llm.tokenize(answer.encode(), add_bos=False))} tokens, "
                  f"{time.perf_counter() - start:.1f} s]", file=sys.stderr)
    finally:
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
