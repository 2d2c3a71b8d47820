"""llama.cpp's importance matrix from the run's own curated pairs: calibration text, `llama-imatrix`, checks of a
given matrix against the model, and `llama-quantize` with the matrix (the C API takes it only as a C++ map)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from gpt4all.core.llamacpp import tool, use_extra_buffers

# llama.cpp refuses these without an importance matrix ("this quantization requires an imatrix")
REQUIRES_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "q2_k_s")
KV_LIMIT = 127  # llama_model_kv_override.val_str holds 127 characters


@dataclass
class Calibration:
    """Calibration text rendered exactly as training saw it, and where it came from."""
    text: str
    source: str
    pairs: int
    tokens: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def calibration(texts: list[str], source: str, count_tokens: Any, ctx: int) -> Calibration:
    """Join rendered pairs; fail (naming `source`) when they are too few for llama-imatrix's two chunks of `ctx`."""
    if not texts:
        raise ValueError(f"{source}: the calibration set is empty, nothing to compute an importance matrix from")
    text = "\n".join(texts)
    tokens = len(count_tokens(text))
    if tokens < 2 * ctx:
        raise ValueError(f"{source}: the calibration set is too small for an importance matrix: {len(texts)} pairs, "
                         f"{tokens} tokens; llama-imatrix needs at least 2 x quant.imatrix_ctx = {2 * ctx} "
                         f"(lower quant.imatrix_ctx or calibrate on more data)")
    return Calibration(text, source, len(texts), tokens)


def _expected_rows(config: dict[str, Any]) -> dict[str, int]:
    """Input width of each quantizable Llama weight, by GGUF name suffix, from a HF config.json."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    rows = {f"attn_{p}.weight": hidden for p in ("q", "k", "v")}
    rows.update({"attn_output.weight": heads * head_dim, "ffn_gate.weight": hidden, "ffn_up.weight": hidden,
                 "ffn_down.weight": int(config["intermediate_size"]), "output.weight": hidden})
    return rows


def check_imatrix(path: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """A GGUF importance matrix fits the model described by `config` (config.json): every entry names a weight
    the model has, with the model's width. Fails naming the file and the first entry that does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quant.imatrix: {path} not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure means the same thing
        raise ValueError(f"quant.imatrix: {path} is not a GGUF importance matrix (llama-imatrix -o x.gguf): {err}")
    sums = {t.name.removesuffix(".in_sum2"): int(t.shape[0]) for t in reader.tensors if t.name.endswith(".in_sum2")}
    if not sums:
        raise ValueError(f"quant.imatrix: {path} holds no importance matrix entries (*.in_sum2)")
    rows, layers = _expected_rows(config), int(config["num_hidden_layers"])
    for name, width in sorted(sums.items()):
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        suffix = m.group(2) if m else name
        if (m and int(m.group(1)) >= layers) or suffix not in rows or rows[suffix] != width:
            raise ValueError(f"quant.imatrix: {path} was computed for another model: entry {name} (width {width}) "
                             f"does not fit this {layers}-layer model (expected width {rows.get(suffix, 'none')})")
    datasets = reader.fields.get("imatrix.datasets")
    chunks = reader.fields.get("imatrix.chunk_count")
    return {"path": str(path), "entries": len(sums), "datasets": list(datasets.contents()) if datasets else [],
            "chunks": int(chunks.contents()) if chunks else None}


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout + proc.stderr


def compute_imatrix(model_gguf: Path, cal: Calibration, out_dir: Path, ctx: int = 512,
                    n_threads: int = 1) -> dict[str, Any]:
    """Run llama-imatrix over the calibration text; the text file's name carries its digest, so the matrix (and
    every GGUF quantized with it) names the data in `imatrix.datasets` / `quantize.imatrix.dataset`."""
    text_path = out_dir / f"calibration-{cal.digest[:16]}.txt"
    text_path.write_text(cal.text)
    out = out_dir / "imatrix.gguf"
    _run([str(tool("llama-imatrix")), "-m", str(model_gguf), "-f", str(text_path), "-o", str(out), "-c", str(ctx),
          "--no-ppl", "--parse-special", "-t", str(n_threads), "-b", str(ctx),
          *([] if use_extra_buffers() else ["--no-repack"])], "llama-imatrix")
    reader = gguf.GGUFReader(str(out))
    return {"path": str(out), "calibration_text": str(text_path), "dataset": cal.source,
            "dataset_digest": cal.digest, "pairs": cal.pairs, "tokens": cal.tokens, "ctx": ctx,
            "chunks": int(reader.fields["imatrix.chunk_count"].contents())}


def provenance_kv(info: dict[str, Any]) -> dict[str, str]:
    """gpt4all.imatrix.* GGUF keys (llama-quantize --override-kv) naming the calibration data."""
    kv = {"gpt4all.imatrix.dataset_digest": f"str:{info.get('dataset_digest', '')}",
          "gpt4all.imatrix.dataset": f"str:{str(info.get('dataset', ''))[-(KV_LIMIT - 4):]}"}
    for key in ("tokens", "chunks", "pairs"):
        if info.get(key) is not None:
            kv[f"gpt4all.imatrix.{key}"] = f"int:{int(info[key])}"
    return kv


def quantize_with_imatrix(src: Path, dst: Path, ftype: str, imatrix: Path, kv: dict[str, str],
                          n_threads: int = 1) -> Path:
    """llama-quantize src -> dst as `ftype` with the importance matrix; a failed run leaves no file behind."""
    cmd = [str(tool("llama-quantize")), "--imatrix", str(imatrix)]
    for key, value in kv.items():
        cmd += ["--override-kv", f"{key}={value}"]
    cmd += [str(src), str(dst), ftype.upper(), str(n_threads)]
    try:
        _run(cmd, f"llama-quantize {ftype}")
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise
    return Path(dst)


def metadata(path: str | Path, prefixes: tuple[str, ...] = ("quantize.imatrix.", "gpt4all.imatrix.")) -> dict:
    """The importance-matrix keys of a quantized GGUF."""
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefixes)}


def model_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())
