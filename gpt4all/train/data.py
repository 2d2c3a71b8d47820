"""The curated prompt/response pairs as a Lightning data module: guard, tokenize with the template, split, batch."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
from datasets import Dataset, DatasetDict, load_from_disk
from torch.utils.data import DataLoader

from gpt4all.core.template import IGNORE_INDEX, check_truncation, encode_pair
from gpt4all.train.batching import Collator, ResumableSampler, make_units, resume_progress
from gpt4all.train.guard import check_no_eval_leak

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "response")


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes: at least one val row when val_fraction > 0 and n >= 2, never an empty train set."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if val_fraction == 0.0 or n < 2:
        return n, 0
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return n - n_val, n_val


def _saved_without_rows(data_dir: Path) -> bool:
    """True when `data_dir` holds a Dataset saved by save_to_disk with no data file (0 rows)."""
    state = data_dir / "state.json"
    if not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("_data_files") == []
    except (OSError, ValueError):
        return False


def encode_gpt4all_2023(tokenizer: Any, template: Any, prompt: str, response: str,
                        max_length: int) -> tuple[list[int], list[int]]:
    """Ids and labels as the original GPT4All training code (`data.py`, `tokenize_inputs`, 2023) made them.

    One tokenizer call on prompt + separator + response + suffix, with the tokenizer's special tokens (BOS),
    truncated at max_length from the right. The mask covers the prompt's own tokenization (BOS included) plus
    the separator's tokens when tokenized alone, BOS dropped: for a SentencePiece tokenizer "\n" alone is two
    pieces ("▁", "<0x0A>") but one inside the joint text, so, as in the original, the response's first token
    is masked too. A prompt of max_length // 2 tokens or more is first cut to its first
    min(max_length // 2, len(prompt) // 2) characters and its length counted with truncation at max_length // 2.
    With the `gpt4all_2023` template (prompt "{prompt}\n", suffix eos) this is the original token stream;
    another template's text before `{prompt}` counts as part of the prompt, its text after it as the separator.
    """
    head, _, separator = str(template["prompt"] if isinstance(template, dict) else template.prompt).partition("{prompt}")
    suffix = str(template["response_suffix"] if isinstance(template, dict) else template.response_suffix)
    eos, pad = tokenizer.eos_token, tokenizer.pad_token_id
    if eos and eos != "</s>":  # the original's "hacky backward compatible" step
        response = response.replace("</s>", eos)
    sep_ids = list(tokenizer(separator)["input_ids"]) if separator else []
    if sep_ids and sep_ids[0] == tokenizer.bos_token_id:
        sep_ids = sep_ids[1:]
    half = max_length // 2
    prompt_len = len(tokenizer(head + prompt)["input_ids"])
    if prompt_len >= half:
        prompt = prompt[: min(half, len(prompt) // 2)]
        cut = tokenizer(head + prompt, max_length=half, truncation=True)["input_ids"]
        prompt_len = sum(t != pad for t in cut)
    ids = list(tokenizer(head + prompt + separator + response + suffix, max_length=max_length,
                         truncation=True)["input_ids"])
    masked = min(prompt_len + len(sep_ids), len(ids))
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


class ChatDataModule(L.LightningDataModule):
    """Curated pairs saved with `Dataset.save_to_disk` (columns id, prompt, response, source).

    Every row becomes prompt + response + template suffix, with labels IGNORE_INDEX on the prompt (the model
    learns to answer and to stop). `template` is a resolved `{prompt, response_suffix}` (see
    gpt4all.core.template.resolve_template). Rows whose prompt is an evaluation instruction are refused
    (`eval_guard`). The train/val split is a seeded shuffle of the rows; `packing` picks how rows are batched
    (gpt4all.train.batching). Under DDP each rank reads its own shard of the units.
    """

    def __init__(
        self,
        data_dir: str | Path,
        tokenizer: Any,
        template: Any,
        max_length: int = 512,
        batch_size: int = 4,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        packing: str = "none",
        pack_length: int | None = None,
        eval_guard: bool = True,
        eval_guard_path: str | None = None,
        truncation: str = "prompt_left",
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.packing = packing
        self.pack_length = int(pack_length or max_length)
        if self.pack_length < self.max_length and packing == "pack":
            raise ValueError(f"train.pack_length ({self.pack_length}) must be at least model.max_length ({max_length})")
        self.eval_guard, self.eval_guard_path = eval_guard, eval_guard_path
        self.truncation = check_truncation(truncation)
        split_sizes(2, self.val_fraction)  # validate early
        make_units([], packing, 1, 1, 0)  # validate the mode early
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        self.collate = Collator(pad, pack=packing == "pack")
        self.train_examples: list[dict[str, list[int]]] | None = None
        self.val_examples: list[dict[str, list[int]]] | None = None

    # -- loading ---------------------------------------------------------------------------------------
    def _load(self) -> Dataset:
        if _saved_without_rows(self.data_dir):
            # datasets 5.2 writes no shard for a 0-row Dataset and its load_from_disk then fails with IndexError
            raise ValueError(f"dataset in {self.data_dir} is empty: nothing to train on")
        try:
            ds = load_from_disk(str(self.data_dir))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no dataset saved with save_to_disk in {self.data_dir}: {err}") from err
        if isinstance(ds, DatasetDict):
            if "train" not in ds:
                raise ValueError(f"{self.data_dir} holds a DatasetDict without a 'train' split: {list(ds)}")
            ds = ds["train"]
        missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"dataset in {self.data_dir} lacks column(s) {', '.join(missing)} (has {', '.join(ds.column_names)})"
            )
        if len(ds) == 0:
            raise ValueError(f"dataset in {self.data_dir} is empty: nothing to train on")
        return ds

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        ds = self._load()
        prompts = [str(p) for p in ds["prompt"]]
        if self.eval_guard:
            ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
            check_no_eval_leak(prompts, ids, str(self.data_dir), self.eval_guard_path)
        examples = []
        for prompt, response in zip(prompts, ds["response"]):
            if self.truncation == "gpt4all_2023":
                ids, labels = encode_gpt4all_2023(self.tokenizer, self.template, prompt, str(response), self.max_length)
            else:
                ids, labels = encode_pair(self._encode, self.template, prompt, str(response), self.max_length)
            examples.append({"input_ids": ids, "labels": labels})
        order = list(range(len(examples)))
        random.Random(self.seed).shuffle(order)
        n_train, n_val = split_sizes(len(examples), self.val_fraction)
        self.train_examples = [examples[i] for i in order[:n_train]]
        self.val_examples = [examples[i] for i in order[n_train:]]
        log.info("data %s: %d train / %d val examples, batching %s", self.data_dir, n_train, n_val, self.packing)

    @property
    def num_train_examples(self) -> int:
        self.setup()
        return len(self.train_examples)

    @property
    def num_val_examples(self) -> int:
        self.setup()
        return len(self.val_examples)

    # -- loaders ---------------------------------------------------------------------------------------
    def _loader(self, examples: list, train: bool) -> DataLoader:
        units = make_units(examples, self.packing, self.batch_size, self.pack_length, self.seed + (0 if train else 1))
        per_batch = 1 if self.packing == "group_by_length" else self.batch_size
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ResumableSampler(len(units), per_batch, shuffle=train, seed=self.seed, rank=rank, world_size=world)
        if train and trainer is not None:
            sampler.progress = lambda: resume_progress(self.trainer, math.ceil(len(sampler) / per_batch))
        return DataLoader(
            units,
            batch_size=per_batch,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_examples, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """No validation set: an empty list, which Lightning 2.6 takes as "skip validation" (None is rejected)."""
        self.setup()
        if not self.val_examples:
            return []
        return self._loader(self.val_examples, train=False)
