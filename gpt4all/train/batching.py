"""How examples become batches: packing, length grouping, padding, and a sampler that shards and resumes.

Every loader item is a *unit*, a list of tokenized examples: one example (`none`), a packed row of several
(`pack`), or a whole batch of similar length (`group_by_length`). Units are formed once with a seeded shuffle;
`ResumableSampler` reorders them every epoch, shards them over ranks and, after a resume, skips the batches the
checkpointed run had already trained on.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from gpt4all.core.template import IGNORE_INDEX

Example = dict[str, list[int]]
MODES = ("pack", "group_by_length", "none")


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices grouped so each group's total length is at most `capacity`."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the pack length {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def make_units(examples: list[Example], mode: str, batch_size: int, capacity: int, seed: int) -> list[list[Example]]:
    """Group examples into loader items for `mode` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"train.packing must be one of {', '.join(MODES)}; got {mode!r}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if mode == "none":
        return [[examples[i]] for i in order]
    if mode == "pack":
        bins = pack_bins([len(examples[i]["input_ids"]) for i in order], capacity)
        return [[examples[order[j]] for j in sorted(b)] for b in bins]
    # group_by_length: sort mega-batches of 50 batches by length, cut them into batches (as HF's group_by_length)
    units: list[list[Example]] = []
    mega = 50 * batch_size
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -len(examples[i]["input_ids"]))
        units += [[examples[i] for i in chunk[k : k + batch_size]] for k in range(0, len(chunk), batch_size)]
    return units


class Collator:
    """Turn a list of units into tensors.

    `pack=False`: one row per example, right-padded to the longest row of the batch, with an attention mask.
    `pack=True`: one row per unit, its examples concatenated, `position_ids` restarting at 0 for each example and
    no attention mask, from which transformers (5.x masking_utils) builds a block-diagonal causal mask: tokens
    attend only within their own example. The first label of each example is IGNORE_INDEX, so no loss crosses a
    boundary. Both give `token_mask` (1 on real tokens) for throughput counts.
    """

    def __init__(self, pad_token_id: int, pack: bool):
        self.pad_token_id, self.pack = int(pad_token_id), pack

    def __call__(self, units: Sequence[list[Example]]) -> dict[str, torch.Tensor]:
        rows = [self._row(u) for u in units] if self.pack else [self._row([ex]) for u in units for ex in u]
        width = max(len(r[0]) for r in rows)
        n = len(rows)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        token_mask = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        for i, (row_ids, row_labels, row_pos) in enumerate(rows):
            k = len(row_ids)
            ids[i, :k] = torch.tensor(row_ids)
            labels[i, :k] = torch.tensor(row_labels)
            token_mask[i, :k] = 1
            positions[i, :k] = torch.tensor(row_pos)
            positions[i, k:] = torch.arange(width - k)  # padding: a segment of its own
        batch = {"input_ids": ids, "labels": labels, "token_mask": token_mask}
        if self.pack:
            batch["position_ids"] = positions
        else:
            batch["attention_mask"] = token_mask.clone()
        return batch

    @staticmethod
    def _row(unit: list[Example]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for ex in unit:
            ids += ex["input_ids"]
            labels += [IGNORE_INDEX] + list(ex["labels"][1:])
            pos += range(len(ex["input_ids"]))
        return ids, labels, pos


def padding_free(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A packed batch (`Collator(pack=True)`) as one row of its real tokens: the rows concatenated without their
    padding, `position_ids` still restarting at 0 for each example (TRL's padding-free batches). Attention that
    keeps examples apart by their positions (gpt4all/train/attention.py) sees the same examples, and the linears,
    norms and activations no longer run on padding. Other batches are returned unchanged."""
    keep = batch["token_mask"].bool()
    if "position_ids" not in batch or bool(keep.all()) and keep.shape[0] == 1:
        return batch
    return {k: v[keep][None] if isinstance(v, torch.Tensor) and v.shape == keep.shape else v for k, v in batch.items()}


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle of `n` units, sharded over `world_size` ranks (padded by repetition so every rank
    gets as many batches), skipping the first `skip_batches()` batches of the epoch when resuming.

    `progress` returns (epoch, batches already done in that epoch); without it, the epoch given to `set_epoch`.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 progress: Callable[[], tuple[int, int]] | None = None):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.progress = rank, world_size, progress
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __len__(self) -> int:
        return self.per_rank()

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.progress() if self.progress else (self.epoch, 0)
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank() * self.world_size - self.n]
        mine = order[self.rank :: self.world_size]
        return iter(mine[done * self.batch_size :])


def resume_progress(trainer: Any, num_batches: int) -> tuple[int, int]:
    """(epoch, batches of it already trained) from a Lightning trainer's restored step counter."""
    if trainer is None:
        return 0, 0
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1)))
    steps_per_epoch = math.ceil(num_batches / accumulate)
    epoch = int(trainer.current_epoch)
    done = (int(trainer.global_step) - epoch * steps_per_epoch) * accumulate
    return epoch, min(max(0, done), num_batches)
