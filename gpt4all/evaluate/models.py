"""Which models an evaluate run scores: the legacy switches plus any keyed specs in `evaluate.models`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import latest_run
from gpt4all.core.lm import KINDS, Spec, resolve_run_dir
from gpt4all.core.manifest import read_manifest


@dataclass
class Candidate:
    name: str
    spec: Spec
    role: str = "model"  # base | finetuned | quantized | model
    quant: dict[str, Any] | None = None  # the quantize run's metrics (size, speed) for the trade-off table

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def path(self) -> str | None:
        return self.spec.path


def _template(value: Any, fallback: Any) -> Any:
    return OmegaConf.create(dict(value)) if value else fallback


def _run_template(path: str | None) -> Any:
    """The template of the run a model file/dir lies in (e.g. a train run's adapter/), if any."""
    manifest = Path(path).parent / "manifest.json" if path else None
    if manifest is None or not manifest.is_file():
        return None
    return read_manifest(manifest.parent)["inputs"].get("template")


def candidates(cfg: DictConfig) -> list[Candidate]:
    """base (evaluate.include_base), the finetuned / quantized runs named or latest, then evaluate.models."""
    ev, default_template = cfg.evaluate, cfg.model.template
    if default_template.get("style") == "auto":  # model=hf: the tokenizer decides between chat and text
        from gpt4all.core.models import load_tokenizer
        from gpt4all.core.template import resolve_template

        default_template = resolve_template(default_template, load_tokenizer(cfg.model, cfg.paths.cache_dir))
    out = [Candidate(f"base:{cfg.model.name}", Spec("base", template=default_template), "base")] \
        if ev.include_base else []

    def run_dir(explicit: str | None, stage: str) -> Path | None:
        if explicit:
            return Path(explicit)
        return latest_run(cfg.paths.output_dir, stage) if ev.latest else None

    train_dir = run_dir(ev.train_dir, "train")
    if train_dir:
        read_manifest(train_dir, "train")
        spec = resolve_run_dir(train_dir)
        out.append(Candidate("finetuned", Spec(spec.kind, spec.path, template=_template(spec.template, default_template)),
                             "finetuned"))
    quant_dir = run_dir(ev.quantize_dir, "quantize")
    if quant_dir:
        m = read_manifest(quant_dir, "quantize")
        if m["metrics"].get("kind", "gguf" if "gguf" in m["outputs"] else "none") != "none":
            spec = resolve_run_dir(quant_dir)
            spec.template = _template(spec.template, default_template)
            label = m["metrics"].get("label") or Path(m["outputs"]["gguf"]).stem.replace("model-", "")
            out.append(Candidate(f"finetuned-{label}", spec, "quantized", m["metrics"]))
    for name, node in (ev.models or {}).items():
        if node.kind not in KINDS:
            raise ValueError(f"evaluate.models.{name}.kind must be one of {', '.join(KINDS)}, got {node.kind!r}")
        if node.kind != "base" and not node.path:
            raise ValueError(f"evaluate.models.{name}.path is required for kind '{node.kind}'")
        if node.kind in ("gguf", "run_dir") and not Path(node.path).exists():
            raise FileNotFoundError(f"evaluate.models.{name}.path: {node.path} not found")
        spec = resolve_run_dir(node.path) if node.kind == "run_dir" else \
            Spec(node.kind, node.path, node.base, node.lora, template=_run_template(node.path))
        spec.template = _template(node.template, _template(spec.template, default_template))
        if node.reference:
            spec.reference = Spec("gguf" if spec.kind == "gguf" else "hf", node.reference, template=spec.template)
        if any(c.name == name for c in out):
            raise ValueError(f"evaluate.models.{name}: the name is already taken by another model")
        out.append(Candidate(name, spec))
    if not out:
        raise ValueError("nothing to evaluate: set evaluate.include_base, evaluate.train_dir/quantize_dir, "
                         "evaluate.latest or evaluate.models")
    return out


def comparisons(cfg: DictConfig, models: list[Candidate]) -> list[tuple[str, str]]:
    """Pairs (a, b) to compare: evaluate.compare, else finetuned vs base (one-sided: lower?) and quantized vs
    finetuned (two-sided, with what quantization costs; see evaluate.stage.is_quantization)."""
    names = [c.name for c in models]
    if cfg.evaluate.compare:
        pairs = [tuple(p) for p in cfg.evaluate.compare]
        for p in pairs:
            if len(p) != 2 or any(n not in names for n in p):
                raise ValueError(f"evaluate.compare entry {list(p)} must name two scored models: {', '.join(names)}")
        return pairs  # type: ignore[return-value]
    by_role = {c.role: c.name for c in models}
    pairs = []
    if "finetuned" in by_role and "base" in by_role:
        pairs.append((by_role["finetuned"], by_role["base"]))
    if "quantized" in by_role:
        ref = by_role.get("finetuned") or by_role.get("base")
        if ref:
            pairs.append((by_role["quantized"], ref))
    return pairs
