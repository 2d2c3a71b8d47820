"""The curated prompt/response pairs as a Lightning data module: tokenize with the shared template, split, pad."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from torch.utils.data import DataLoader

from gpt4all.core.template import IGNORE_INDEX, encode_pair

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "response")


class PadCollator:
    """Pad `input_ids` / `labels` on the right to the longest example of the batch (labels with IGNORE_INDEX)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in examples)
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            k = len(ex["input_ids"])
            input_ids[i, :k] = torch.tensor(ex["input_ids"], dtype=torch.long)
            attention_mask[i, :k] = 1
            labels[i, :k] = torch.tensor(ex["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


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


class ChatDataModule(L.LightningDataModule):
    """Curated pairs saved with `Dataset.save_to_disk` (columns id, prompt, response, source).

    Every row becomes prompt + response + template suffix, with labels IGNORE_INDEX on the prompt (the model
    learns to answer and to stop). The train/val split is a seeded shuffle of the rows.
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
        split_sizes(2, self.val_fraction)  # validate early
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        self.collate = PadCollator(pad)
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
        examples = []
        for prompt, response in zip(ds["prompt"], ds["response"]):
            ids, labels = encode_pair(
                self._encode, self.template, str(prompt), str(response), self.max_length, add_suffix=True
            )
            examples.append({"input_ids": ids, "labels": labels})
        order = list(range(len(examples)))
        random.Random(self.seed).shuffle(order)
        n_train, n_val = split_sizes(len(examples), self.val_fraction)
        self.train_examples = [examples[i] for i in order[:n_train]]
        self.val_examples = [examples[i] for i in order[n_train:]]
        log.info("data %s: %d train / %d val examples", self.data_dir, n_train, n_val)

    @property
    def num_train_examples(self) -> int:
        self.setup()
        return len(self.train_examples)

    @property
    def num_val_examples(self) -> int:
        self.setup()
        return len(self.val_examples)

    # -- loaders ---------------------------------------------------------------------------------------
    def _loader(self, examples: list, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            examples,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """No validation set: an empty list, which Lightning 2.6 takes as "skip validation" (None is rejected)."""
        self.setup()
        if not self.val_examples:
            return []
        return self._loader(self.val_examples, shuffle=False)
