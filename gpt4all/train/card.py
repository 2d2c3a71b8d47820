"""The model card (README.md) of a train run: config, data manifest, metrics and the terms binding the weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gpt4all.core.manifest import read_manifest
from gpt4all.core.models import model_license

log = logging.getLogger(__name__)

# What binds a model trained on a teacher's outputs, by teacher config name (the paper's "Use Considerations").
TEACHER_TERMS = {
    "openai": "OpenAI's Terms of Use (https://openai.com/policies/terms-of-use) apply to the distilled responses; "
              "they prohibit using outputs to develop models that compete with OpenAI. The GPT4All report released "
              "its model for research purposes only for this reason.",
    "llamacpp_local": "Responses were generated locally by the bundled SmolLM2-135M-Instruct (Apache-2.0).",
}


def _source_manifests(curate_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """The curate and collect manifests behind the data, and why the collect one is missing (None if found)."""
    if curate_dir is None:  # trained on data.pairs directly: the card names the dataset instead
        return {}, None, None
    curate = read_manifest(curate_dir, "curate")
    collect_dir = curate.get("inputs", {}).get("collect_dir")
    if not collect_dir:
        return curate, None, f"the curate run {curate_dir} names no collect run"
    try:
        return curate, read_manifest(collect_dir, "collect"), None
    except (FileNotFoundError, ValueError) as err:
        return curate, None, str(err)


def teacher_terms(cfg: Any, collect: dict[str, Any] | None, missing: str | None = None) -> str:
    name = (collect or {}).get("inputs", {}).get("teacher") or cfg.teacher.get("name", "unknown")
    model = (collect or {}).get("inputs", {}).get("model") or cfg.teacher.get("model", "")
    terms = TEACHER_TERMS.get(str(name), f"Check the terms of use of the teacher API ({name}) for its outputs.")
    if missing:
        return (f"Teacher: unknown, the collect manifest is missing ({missing}); this run's config names `{name}` "
                f"(`{model}`), which may not be the teacher that answered the prompts. {terms} Check the terms of "
                "the teacher that did.")
    return f"Teacher: `{name}` (`{model}`). {terms}"


def model_card(cfg: Any, curate_dir: Path | None, template: dict[str, str], metrics: dict[str, Any],
               pairs: dict[str, Any] | None = None) -> str:
    """Markdown for README.md next to the weights; `pairs`: the brought dataset (name, location, digest)."""
    curate, collect, missing = _source_manifests(curate_dir)
    if missing:
        log.warning("model card: the collect manifest is missing (%s): the teacher's terms come from this run's "
                    "config (teacher=%s), which may not be the teacher that answered the prompts; the card says so",
                    missing, cfg.teacher.get("name"))
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "lora", "train", "trainer")}
    data = {"curate_dir": str(curate_dir) if curate_dir else None, "counts": curate.get("counts", {}),
            "collect": {k: (collect or {}).get(k) for k in ("inputs", "counts")}, "pairs": pairs}
    adapter = cfg.lora.get("enabled", True)
    kind = (f"a {str(cfg.lora._target_).rpartition('.')[2]} adapter (r {cfg.lora.get('r')}, alpha "
            f"{cfg.lora.get('lora_alpha')})" if adapter else "a full finetune")
    return "\n".join([
        "---", f"base_model: {cfg.model.pretrained or cfg.model.name}", "library_name: peft" if adapter
        else "library_name: transformers", "tags: [gpt4all-lab, lora, distillation]", "---", "",
        f"# {cfg.model.name} finetuned by gpt4all-lab", "",
        f"{kind} on {metrics.get('train_examples')} prompt/response pairs distilled from a teacher model, "
        "reproducing the GPT4All technical report (Anand et al., 2023). `adapter/` loads with "
        "`PeftModel.from_pretrained`, `merged/` with `AutoModelForCausalLM.from_pretrained`.", "",
        "## Prompt format", "", f"```\n{template['prompt']}<response>{template['response_suffix']}\n```", "",
        "## Metrics", "", "```json", json.dumps(metrics, indent=2), "```", "",
        "## Data", "",
        *([f"Dataset: `{pairs['name']}` ({pairs['rows']} rows, content digest `{pairs['digest']}`).", ""]
          if pairs else []),
        "```json", json.dumps(data, indent=2, default=str), "```", "",
        "## Use considerations", "",
        f"- Base model licence: {model_license(cfg.model)}. The finetuned weights inherit it.",
        f"- {teacher_terms(cfg, collect, missing)}" if collect or not pairs else
        f"- Responses come from the dataset `{pairs['name']}`: its licence and the terms of the model that wrote "
        "them bind the finetuned weights.",
        "- The data keeps the licences of its prompt sources (e.g. Stack Overflow content is CC BY-SA 4.0).",
        "- The Self-Instruct evaluation instructions were refused as training data (train.eval_guard).", "",
        "## Config", "", "```yaml", OmegaConf.to_yaml(OmegaConf.create(config)).rstrip(), "```", "",
    ])
