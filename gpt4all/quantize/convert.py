"""HF checkpoints and PEFT adapters to GGUF through llama.cpp's own converters (convert_hf_to_gguf.py,
convert_lora_to_gguf.py) at the installed llama-cpp-python revision: every architecture llama.cpp knows, with
its tokenizer, pre-tokenizer, special tokens and chat template, and no exporter written per architecture here."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from pathlib import Path

from gpt4all.core.llamacpp import run_script, source_dir

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class UnsupportedArchitectureError(ValueError):
    """llama.cpp's converter does not know the model's architecture."""


class ConversionError(RuntimeError):
    """llama.cpp's converter failed; the message carries the end of its log."""


@functools.lru_cache(maxsize=2)
def supported_architectures(src: Path | None = None) -> frozenset[str]:
    """The text-model architectures (config.json `architectures`) convert_hf_to_gguf.py converts."""
    proc = run_script("convert_hf_to_gguf.py", ["--print-supported-models"])
    names, section = set(), None
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if line.endswith("models:"):
            section = line.split()[0]
        elif section == "TEXT" and line.startswith("- "):
            names.add(line[2:].strip())
    if not names:
        raise ConversionError(f"convert_hf_to_gguf.py --print-supported-models listed nothing: {proc.stderr[-500:]}")
    return frozenset(names)


def architecture(model_dir: Path) -> str:
    """The first `architectures` entry of a checkpoint's config.json."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a HF checkpoint (save it with save_pretrained)")
    archs = json.loads(cfg_path.read_text()).get("architectures") or []
    if not archs:
        raise UnsupportedArchitectureError(f"{cfg_path} names no `architectures`: llama.cpp's converter needs one")
    return str(archs[0])


def check_architecture(model_dir: Path) -> str:
    """Raise UnsupportedArchitectureError (naming the architecture) unless the converter knows it."""
    arch = architecture(model_dir)
    if arch not in supported_architectures(source_dir()):
        raise UnsupportedArchitectureError(
            f"{Path(model_dir) / 'config.json'}: architecture {arch!r} is not supported by llama.cpp's "
            f"convert_hf_to_gguf.py at {source_dir().name}: export with quant=gptq_4bit / bnb_nf4 / none instead")
    return arch


def _run(script: str, args: list[str], out_path: Path, out_flag: str | None = "--outfile") -> Path:
    """Run a llama.cpp script writing `<out>.tmp` (after `out_flag`, or as the last positional argument), then
    rename it into place; no partial file survives a failure."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        proc = run_script(script, [*args, *([out_flag] if out_flag else []), str(tmp)])
        if proc.returncode != 0 or not tmp.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise ConversionError(f"llama.cpp's {script} failed writing {out_path} (exit {proc.returncode}):\n{tail}")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def export_gguf(model_dir: Path, out_path: Path, outtype: str = "f16", model_name: str | None = None) -> Path:
    """Write a HF checkpoint dir (config.json, safetensors, tokenizer files) as one GGUF with convert_hf_to_gguf.py."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    check_architecture(model_dir)
    if not any(Path(model_dir).glob("*.safetensors")) and not any(Path(model_dir).glob("*.bin")):
        raise FileNotFoundError(f"no weights (*.safetensors / *.bin) in {model_dir}: the converter would write "
                                "a file without tensors")
    args = [str(model_dir), "--outtype", outtype]
    if model_name:
        args += ["--model-name", model_name]
    return _run("convert_hf_to_gguf.py", args, out_path)


def export_lora_gguf(adapter_dir: Path, base_dir: Path, out_path: Path, outtype: str = "f32") -> Path:
    """Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF with convert_lora_to_gguf.py; `base_dir` holds the base
    model's config.json and tokenizer (weights are not read). Applied at load time:
    `llama-cli -m base.gguf --lora adapter.gguf`, `Llama(model_path=..., lora_path=...)`."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    check_architecture(base_dir)
    return _run("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_dir), "--outtype", outtype], out_path)


def set_metadata(path: Path, pre_tokenizer: str | None = None, chat_template: str | None = None) -> Path:
    """Rewrite tokenizer.ggml.pre and/or tokenizer.chat_template in place with llama.cpp's gguf_new_metadata.py.
    `pre_tokenizer`: e.g. `starcoder` for GPT4All desktop <= 2.8, whose llama.cpp predates the `smollm` name for
    the same split rule."""
    path = Path(path)
    args = ["--force"] + (["--pre-tokenizer", pre_tokenizer] if pre_tokenizer else [])
    with tempfile.TemporaryDirectory() as tmp:
        if chat_template:
            (Path(tmp) / "chat_template.jinja").write_text(chat_template)
            args += ["--chat-template-file", str(Path(tmp) / "chat_template.jinja")]
        out = _run("gguf-py/gguf/scripts/gguf_new_metadata.py", [*args, str(path)],
                   path.with_name(path.name + ".meta"), out_flag=None)
    os.replace(out, path)
    return path
