"""Stage train: data module (tokenize, split, mask, pack) and LoRA module (overfit, resume, frozen base, save)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from gpt4all.core.template import IGNORE_INDEX, encode_pair, render_prompt, resolve_template
from gpt4all.train import attention
from gpt4all.train.attention import PACKED_SDPA
from gpt4all.train.batching import Collator, ResumableSampler, pack_bins, padding_free
from gpt4all.train.callbacks import Throughput
from gpt4all.train.cpu import CPUDropout
from gpt4all.train.data import ChatDataModule, split_sizes
from gpt4all.train.loss import cast_weight, linear_cross_entropy
from gpt4all.train.module import LoRAModule, lr_factor

TEMPLATE = OmegaConf.create(
    {
        "prompt": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
        "response_suffix": "<|im_end|>\n",
    }
)
LORA = OmegaConf.create(
    {
        "_target_": "peft.LoraConfig",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "bias": "none",
    }
)

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary color.", "Red is a primary color."),
    ("What is 2 + 2?", "2 + 2 equals 4."),
    ("Say hello.", "Hello!"),
    ("What color is the sky?", "The sky is blue on a clear day."),
    ("Give me a fruit.", "An apple."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Spell cat.", "C-A-T."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Count to three.", "One, two, three."),
]


def save_pairs(path: Path, pairs=PAIRS) -> Path:
    Dataset.from_dict(
        {
            "id": [f"r{i}" for i in range(len(pairs))],
            "prompt": [p for p, _ in pairs],
            "response": [r for _, r in pairs],
            "source": ["test"] * len(pairs),
        }
    ).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return save_pairs(tmp_path_factory.mktemp("curated") / "dataset")


def load_base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama with its (tied) embeddings scaled x10, saved as a HF checkpoint.

    At the default init (std 0.02, hidden 64, frozen final norm) the logits stay within about +-1.3, so no
    adapter on the linear layers can take the loss much below ln(49152) = 10.8 (40 steps: 10.8 -> 10.2).
    Scaled, the same 40 steps overfit 12 pairs from 13.1 to about 6.5: a clear signal that training works.
    """
    model = load_base(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    out = tmp_path_factory.mktemp("tiny_llama_x10")
    model.save_pretrained(out)
    return out


def quiet_trainer(**kw) -> L.Trainer:
    args = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    args.update(kw)
    return L.Trainer(**args)


# -- data ---------------------------------------------------------------------------------------------------

def test_split_sizes():
    assert split_sizes(12, 0.1) == (11, 1)
    assert split_sizes(12, 0.25) == (9, 3)
    assert split_sizes(2, 0.01) == (1, 1)
    assert split_sizes(1, 0.5) == (1, 0)
    assert split_sizes(12, 0.0) == (12, 0)
    with pytest.raises(ValueError):
        split_sizes(12, 1.0)


def test_split_is_seeded_and_disjoint(data_dir, tokenizer):
    def split(seed):
        dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, batch_size=4, val_fraction=0.25, seed=seed)
        dm.setup("fit")
        return [tuple(e["input_ids"]) for e in dm.train_examples], [tuple(e["input_ids"]) for e in dm.val_examples]

    train_a, val_a = split(0)
    train_b, val_b = split(0)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(train_a) == 9 and len(val_a) == 3
    assert not set(train_a) & set(val_a)
    assert set(train_a) | set(val_a) == {
        tuple(encode_pair(lambda t: tokenizer.encode(t, add_special_tokens=False), TEMPLATE, p, r, 512)[0])
        for p, r in PAIRS
    }
    assert split(1)[1] != val_a or split(2)[1] != val_a


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A LLaMA-style tokenizer (SentencePiece BPE with byte fallback, BOS added), trained offline on a few
    sentences and loaded by transformers' LlamaTokenizer."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    sentences = [p + " " + r for p, r in PAIRS] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2)
    out = tmp_path_factory.mktemp("spm")
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tok = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True)
    tok.pad_token = tok.eos_token  # as the original training script set it
    return tok


def original_tokenize_inputs(tokenizer, prompt: str, response: str, max_length: int):
    """The steps of the original GPT4All `data.py` (`tokenize_inputs`, 2023) for one pair, without its padding."""
    newline_tokens = tokenizer("\n", return_tensors="pt")["input_ids"][0]
    if newline_tokens[0] == tokenizer.bos_token_id:
        newline_tokens = newline_tokens[1:]
    prompt_len = len(tokenizer(prompt, return_tensors="pt")["input_ids"][0])
    if prompt_len >= max_length // 2:
        prompt = prompt[:min(max_length // 2, len(prompt) // 2)]
        prompt_len = tokenizer(prompt, return_tensors="pt", max_length=max_length // 2,
                               truncation=True).input_ids.ne(tokenizer.pad_token_id).sum().item()
    input_tokens = tokenizer(prompt + "\n" + response + tokenizer.eos_token, truncation=True, max_length=max_length,
                             return_tensors="pt")["input_ids"].squeeze()
    labels = input_tokens.clone()
    labels[:prompt_len + len(newline_tokens)] = -100
    return input_tokens.tolist(), labels.tolist()


def test_gpt4all_2023_reproduces_the_original_token_stream(sentencepiece_tokenizer, tmp_path):
    """train.truncation=gpt4all_2023 with the gpt4all_2023 template gives the original script's ids and labels:
    one call with BOS, the mask from the prompt's own tokenization, a long prompt cut by characters first, the
    joint text cut at max_length."""
    tok, max_length = sentencepiece_tokenizer, 48
    pairs = PAIRS[:6] + [
        ("Write a function that reverses a string. " * 4, "def reverse(s): return s[::-1]"),  # prompt cut first
        ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet. " * 6),                   # response cut at the end
        ("Say hello.", "Zyx unseen qwv words fall back to bytes."),
    ]
    template = resolve_template(OmegaConf.create({"style": "text", "prompt": "{prompt}\n",
                                                  "response_suffix": "{eos}"}), tok)
    dm = ChatDataModule(save_pairs(tmp_path / "ds", pairs), tok, template, max_length=max_length, batch_size=2,
                        val_fraction=0.0, truncation="gpt4all_2023", eval_guard=False)
    dm.setup()
    got = sorted((e["input_ids"], e["labels"]) for e in dm.train_examples)
    want = sorted(original_tokenize_inputs(tok, p, r, max_length) for p, r in pairs)
    assert got == want
    cut = [ids for ids, _ in want if len(ids) == max_length]
    assert len(cut) >= 2  # the truncation paths ran
    # the stream the old rule produced (prompt and response encoded apart, no BOS) differs: BOS, and the
    # response's first piece has no word-start marker inside the joint text
    prompt, response = "What is the capital of France?", "Paris is nice."
    ids, labels = original_tokenize_inputs(tok, prompt, response, max_length)
    n_prompt = len(tok(prompt)["input_ids"])  # BOS included
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[n_prompt]) == "<0x0A>"
    assert len(tok("\n")["input_ids"]) - 1 == 2  # "\n" alone: "▁" + "<0x0A>"; one token inside the joint text
    assert labels.count(IGNORE_INDEX) == n_prompt + 2  # so the response's first token is masked, as originally
    assert ids[n_prompt + 1] != tok.encode(response, add_special_tokens=False)[0]  # "P..." in the text, "▁P..." alone
    with pytest.raises(ValueError, match="train.truncation"):
        ChatDataModule(tmp_path / "ds", tok, template, truncation="middle")


def test_labels_mask_prompt_and_padding(data_dir, tokenizer):
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, batch_size=4, val_fraction=0.0, seed=0)
    dm.setup("fit")
    assert dm.num_train_examples == 12 and dm.num_val_examples == 0
    assert dm.val_dataloader() == []
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    suffix_ids = enc(TEMPLATE.response_suffix)
    by_ids = {}
    for p, r in PAIRS:
        by_ids[tuple(enc(render_prompt(TEMPLATE, p)) + enc(r + TEMPLATE.response_suffix))] = (p, r)

    seen = 0
    pad = tokenizer.pad_token_id
    for batch in dm.train_dataloader():
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.dtype == mask.dtype == labels.dtype == torch.long
        assert ids.shape == mask.shape == labels.shape
        lengths = mask.sum(1)
        assert lengths.max() == ids.shape[1]  # padded to the batch max, not to max_length
        for row in range(ids.shape[0]):
            k = int(lengths[row])
            assert mask[row, :k].all() and not mask[row, k:].any()  # right padding
            assert (ids[row, k:] == pad).all()
            assert (labels[row, k:] == IGNORE_INDEX).all()
            p, r = by_ids[tuple(ids[row, :k].tolist())]
            n_prompt = len(enc(render_prompt(TEMPLATE, p)))
            assert (labels[row, :n_prompt] == IGNORE_INDEX).all()
            resp = labels[row, n_prompt:k].tolist()
            assert IGNORE_INDEX not in resp
            assert resp == enc(r + TEMPLATE.response_suffix)
            assert resp[-len(suffix_ids):] == suffix_ids  # the model is taught to stop
            seen += 1
    assert seen == 12


def test_train_loader_shuffle_is_seeded(data_dir, tokenizer):
    def first_epoch(seed):
        dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, batch_size=3, val_fraction=0.0, seed=seed)
        return [b["input_ids"][:, :5].tolist() for b in dm.train_dataloader()]

    assert first_epoch(3) == first_epoch(3)


def test_collator_pads_with_pad_id():
    batch = Collator(7, pack=False)([[{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], [{"input_ids": [4], "labels": [4]}]])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]  # a first token never carries loss
    assert "position_ids" not in batch


def test_pack_collator_restarts_positions_and_masks_boundaries():
    a = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    b = {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}  # even an unmasked first token is not learnt across a boundary
    batch = Collator(0, pack=True)([[a, b], [b]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4, -100, 6, 7], [-100, 6, 7, -100, -100, -100, -100]]
    assert batch["token_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert "attention_mask" not in batch  # transformers derives the block-diagonal mask from position_ids


def test_padding_free_joins_packed_rows_without_padding():
    a = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    b = {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}
    packed = Collator(0, pack=True)([[a, b], [b]])
    flat = padding_free(packed)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 5, 6, 7]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]  # each example still starts at 0
    assert flat["labels"].tolist() == [[-100, -100, 3, 4, -100, 6, 7, -100, 6, 7]]  # no loss across a boundary
    assert flat["token_mask"].tolist() == [[1] * 10]
    padded = Collator(0, pack=False)([[a], [b]])  # rows that need a mask (no position_ids) stay as they are
    assert padding_free(padded) is padded


def test_pack_bins_fit_and_cover():
    lengths = [5, 9, 3, 7, 1, 10, 4, 6]
    bins = pack_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(8))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # 45 tokens: best-fit-decreasing reaches the lower bound here
    with pytest.raises(ValueError, match="pack length"):
        pack_bins([11], 10)


@pytest.mark.parametrize("attn", ["sdpa", PACKED_SDPA])
def test_packed_examples_do_not_see_each_other(tiny_model_dir, data_dir, tokenizer, attn):
    """Logits of each example are the same packed with others as alone: attention stays inside an example, with
    transformers' block-diagonal mask and with gpt4all-lab's per-example attention."""
    model = load_base(tiny_model_dir)
    model.set_attn_implementation(attn)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)  # larger activations: leaks would show
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=2, val_fraction=0.0,
                        packing="pack", pack_length=256)
    batch = next(iter(dm.train_dataloader()))
    row = batch["position_ids"][0]
    starts = (row == 0).nonzero().squeeze(-1).tolist()
    assert len(starts) >= 3  # several examples share the first row
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        ends = starts[1:] + [int(batch["token_mask"][0].sum())]
        for s, e in zip(starts, ends):
            alone = model(input_ids=batch["input_ids"][:1, s:e]).logits[0]
            torch.testing.assert_close(packed[s:e], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", ["matmul", "flash"])
@pytest.mark.parametrize("autocast", [False, True])
def test_packed_attention_gives_the_masked_loss_and_gradients(tiny_model_dir, data_dir, tokenizer, monkeypatch,
                                                               path, autocast):
    """LoRAModule switches to per-example attention on CPU; loss and LoRA gradients match the block-diagonal
    mask's, through the matmul path and the flash fallback (long examples), in float32 and, to bf16 rounding,
    under bf16 autocast."""
    monkeypatch.setattr(attention, "MATH_MAX_LENGTH", 0 if path == "flash" else attention.MATH_MAX_LENGTH)
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=2, val_fraction=0.0,
                        packing="pack", pack_length=256)
    batch = next(iter(dm.train_dataloader()))
    assert 0 < int((batch["token_mask"] == 0).sum())  # padded rows: the packed path must drop that padding
    results = []
    for packed in (True, False):
        torch.manual_seed(0)
        module = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3)
        if packed:
            module.on_fit_start()  # what the Trainer calls: on CPU it switches to per-example attention
            assert module.model.config._attn_implementation == PACKED_SDPA
            assert module.model_batch(batch)["input_ids"].shape == (1, int(batch["token_mask"].sum()))  # padding-free
        else:
            assert module.model_batch(batch) is batch
            assert module.model.config._attn_implementation == "sdpa"
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)  # B starts at zero: give the adapter an effect (same seed both times)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = module.loss(batch)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in module.parameters() if p.requires_grad])))
    (loss_a, grads_a), (loss_b, grads_b) = results
    if not autocast:
        torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads_a, grads_b, atol=1e-5, rtol=1e-4)
    else:  # both in bf16: differences of the order of bf16 rounding, not of a wrong mask
        assert abs(float(loss_a - loss_b)) < 1e-2 * float(loss_b)
        assert float((grads_a - grads_b).norm() / grads_b.norm()) < 0.05


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_matches_autograd(autocast):
    """The chunked loss gives F.cross_entropy's loss and gradients (hidden and a trained weight), chunks of 7
    rows over 30 tokens."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(30, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (30,))
    results = []
    for chunked in (True, False):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if chunked:
                loss = linear_cross_entropy(h, w, targets, chunk_rows=7)
            else:
                loss = torch.nn.functional.cross_entropy((h @ w.T).float(), targets)
        (2.0 * loss).backward()
        results.append((loss.detach(), h.grad, w.grad))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # validation: the loss only
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk_rows=7), results[0][0])
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        if autocast:  # the logits' gradient is rounded to bf16 before or after the 1/n: within bf16 rounding
            torch.testing.assert_close(a, b, atol=1e-3, rtol=2e-2)
        else:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cast_weight_reuses_a_frozen_cast_until_the_weight_changes():
    frozen = torch.randn(50, 16)
    first = cast_weight(frozen, torch.bfloat16)
    assert first is cast_weight(frozen, torch.bfloat16)  # cast once
    torch.testing.assert_close(first, frozen.to(torch.bfloat16), atol=0, rtol=0)
    frozen.mul_(2.0)  # an in-place change (a merge, an optimizer step on a full finetune) is seen
    torch.testing.assert_close(cast_weight(frozen, torch.bfloat16), frozen.to(torch.bfloat16), atol=0, rtol=0)
    trained = torch.randn(50, 16, requires_grad=True)
    assert cast_weight(trained, torch.bfloat16) is not cast_weight(trained, torch.bfloat16)  # never cached


def test_cpu_dropout_replaces_lora_dropout_with_the_same_distribution(tiny_model_dir):
    module = LoRAModule(load_base(tiny_model_dir), OmegaConf.merge(LORA, {"lora_dropout": 0.2}), lr=1e-3)
    drops = [m for m in module.modules() if isinstance(m, CPUDropout)]
    assert len(drops) == 2 * len(LORA.target_modules)  # every adapted layer of the 2-layer model
    drop, x = drops[0], torch.ones(400, 500)
    torch.manual_seed(0)
    y = drop.train()(x)
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.01  # the share dropped is p
    kept = torch.unique(y[y != 0])
    assert kept.numel() == 1 and abs(float(kept) - 1.25) < 1e-4  # kept values are scaled by 1 / (1 - p)
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert torch.equal(drop.eval()(x), x)
    # a bf16 input keeps its dtype, and each kept value is x / (1 - p) rounded once, not x times a scale rounded
    # to bf16 (for p = 0.07 that scale, 1.0753, would be 1.0781)
    xb = torch.randn(400, 500).to(torch.bfloat16)
    levels = 1 << 15
    for p in (0.2, 0.07):
        yb = CPUDropout(p).train()(xb)
        assert yb.dtype == torch.bfloat16
        kept_b = yb != 0
        scale = levels / (levels - round(p * levels))
        torch.testing.assert_close(yb[kept_b], (xb.float()[kept_b] * scale).to(torch.bfloat16), atol=0, rtol=0)
    # four decisions come from each 64-bit draw: neighbours must still be independent (for p = 0.5, a
    # neighbouring pair is dropped together a quarter of the time), and every position drops at rate p
    half = CPUDropout(0.5).train()(torch.ones(1000, 1000)) == 0
    assert abs(float((half[:, 0::2] & half[:, 1::2]).float().mean()) - 0.25) < 0.005
    lanes = half.view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), 0.5), atol=0.005)


def test_packing_modes_cover_every_example_once(data_dir, tokenizer):
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    expected = sorted(len(encode_pair(enc, TEMPLATE, p, r, 64)[0]) for p, r in PAIRS)
    for mode, per_batch in (("pack", 2), ("group_by_length", 4), ("none", 4)):
        dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=per_batch, val_fraction=0.0,
                            packing=mode, pack_length=128)
        seen = []
        for batch in dm.train_dataloader():
            pos, mask = batch.get("position_ids"), batch["token_mask"]
            for r in range(mask.shape[0]):
                if pos is None:
                    seen.append(int(mask[r].sum()))
                else:
                    starts = (pos[r][: int(mask[r].sum())] == 0).nonzero().squeeze(-1).tolist()
                    seen += [b - a for a, b in zip(starts, starts[1:] + [int(mask[r].sum())])]
        assert sorted(seen) == expected, mode
    with pytest.raises(ValueError, match="packing"):
        ChatDataModule(data_dir, tokenizer, TEMPLATE, packing="zip")


def test_group_by_length_reduces_padding(data_dir, tokenizer):
    def pad_fraction(mode):
        dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=4, val_fraction=0.0, packing=mode)
        batches = list(dm.train_dataloader())
        return 1 - sum(int(b["token_mask"].sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)

    assert pad_fraction("group_by_length") < pad_fraction("none")


def test_sampler_shards_and_resumes():
    full = list(ResumableSampler(10, 2, shuffle=True, seed=1, progress=lambda: (3, 0)))
    assert sorted(full) == list(range(10)) and full != list(range(10))
    assert list(ResumableSampler(10, 2, shuffle=True, seed=1, progress=lambda: (3, 2))) == full[4:]
    assert list(ResumableSampler(10, 2, shuffle=True, seed=1, progress=lambda: (4, 0))) != full
    shards = [list(ResumableSampler(9, 1, shuffle=True, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and set(shards[0]) | set(shards[1]) == set(range(9))


def test_resolve_template_from_chat_template(tokenizer):
    chat = resolve_template(OmegaConf.create({"style": "chat", "system": "Be brief."}), tokenizer)
    assert chat == {"prompt": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
                              "<|im_start|>assistant\n", "response_suffix": "<|im_end|>\n"}
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}]
    assert render_prompt(chat, "Hi") + "Hello" + chat["response_suffix"] == tokenizer.apply_chat_template(conv, tokenize=False)
    text = resolve_template(OmegaConf.create({"style": "text", "prompt": "{prompt}\n", "response_suffix": "{eos}"}), tokenizer)
    assert text == {"prompt": "{prompt}\n", "response_suffix": tokenizer.eos_token}
    with pytest.raises(ValueError, match="style"):
        resolve_template(OmegaConf.create({"style": "chatml"}), tokenizer)


def test_empty_dataset_raises_naming_dir(tmp_path, tokenizer):
    d = save_pairs(tmp_path / "empty_ds", pairs=[])
    dm = ChatDataModule(d, tokenizer, TEMPLATE)
    with pytest.raises(ValueError, match="empty_ds"):
        dm.setup("fit")


def test_missing_column_raises_naming_dir(tmp_path, tokenizer):
    d = tmp_path / "no_response_ds"
    Dataset.from_dict({"id": ["a"], "prompt": ["hi"], "source": ["x"]}).save_to_disk(str(d))
    with pytest.raises(ValueError, match="no_response_ds.*response"):
        ChatDataModule(d, tokenizer, TEMPLATE).setup("fit")


# -- module -------------------------------------------------------------------------------------------------

def test_lr_schedule():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(19, 4, 20) > 0
    assert lr_factor(12, 4, 20, "constant") == 1.0
    assert lr_factor(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(19, 4, 20, "cosine") < lr_factor(19, 4, 20, "linear")
    assert lr_factor(100, 0, float("inf")) == 1.0


class Recorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.metrics: list[dict[str, float]] = []
        self.val_losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    def on_validation_epoch_end(self, trainer, pl_module):
        if "val/loss" in trainer.callback_metrics:
            self.val_losses.append(float(trainer.callback_metrics["val/loss"]))


@pytest.fixture(scope="module")
def trained(base_dir, data_dir, tokenizer):
    """LoRA on the tiny model, 40 steps at lr 1e-2 on 12 pairs: it must overfit."""
    L.seed_everything(0, verbose=False)
    base = load_base(base_dir)
    assert not base.training  # from_pretrained gives eval mode; the module must switch to train
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    module = LoRAModule(base, LORA, lr=1e-2, weight_decay=0.0, warmup_steps=5)
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=4, val_fraction=0.25, seed=0)
    rec = Recorder()
    trainer = quiet_trainer(max_steps=40, callbacks=[Throughput(), rec], log_every_n_steps=1, check_val_every_n_epoch=5)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm)
    return module, rec, base_state, trainer


def test_lora_overfits(trained):
    module, rec, _, trainer = trained
    assert module.model.training
    assert trainer.global_step == 40 and len(rec.losses) == 40
    first, last = rec.losses[0], sum(rec.losses[-3:]) / 3
    assert last < 0.7 * first, (first, rec.losses[-5:])
    assert rec.val_losses and rec.val_losses[-1] < rec.losses[0]


def test_logged_metrics(trained):
    module, rec, _, _ = trained
    m = rec.metrics[-1]
    for key in ("train/loss", "train/tokens", "train/tokens_seen", "train/tokens_per_s", "train/useful_tokens_per_s",
                "train/pad_fraction", "lr"):
        assert key in m, sorted(m)
    assert m["train/tokens"] > 0 and m["train/tokens_per_s"] > m["train/useful_tokens_per_s"] > 0
    assert 0 <= m["train/pad_fraction"] < 1
    assert m["train/tokens_seen"] == module.tokens_seen >= 40 * 1
    lrs = [x["lr"] for x in rec.metrics]
    assert lrs[0] == pytest.approx(1e-2 / 5)  # warmup
    assert max(lrs) == pytest.approx(1e-2)
    assert lrs[-1] < lrs[10]  # linear decay
    assert "val/loss" in m


def test_only_lora_trains(trained):
    module, _, base_state, _ = trained
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert module.num_trainable_params == sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert module.num_trainable_params < module.num_total_params
    base = module.model.get_base_model()
    for name, value in base.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(value, base_state[key]), name
    lora_b = [p for n, p in module.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero; training moved it


def test_save_reload_matches(trained, base_dir, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, _, _, _ = trained
    paths = module.save(tmp_path / "out", tokenizer)
    assert set(paths) == {"adapter", "merged"}
    assert (paths["adapter"] / "adapter_config.json").is_file()
    assert (paths["adapter"] / "adapter_model.safetensors").is_file()
    assert list(paths["merged"].glob("*.safetensors"))
    assert (paths["merged"] / "config.json").is_file()

    ids = torch.tensor([tokenizer.encode(render_prompt(TEMPLATE, PAIRS[0][0]) + PAIRS[0][1], add_special_tokens=False)])
    peft_model = module.model
    was_training = peft_model.training
    peft_model.eval()
    with torch.no_grad():
        ref = peft_model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(load_base(base_dir), str(paths["adapter"])).eval()
        adapter_logits = reloaded(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(paths["merged"]), dtype=torch.float32).eval()
        merged_logits = merged(input_ids=ids).logits
        base_logits = load_base(base_dir).eval()(input_ids=ids).logits
    peft_model.train(was_training)

    torch.testing.assert_close(adapter_logits, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged_logits, ref, atol=1e-4, rtol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # the merge happened on a copy: the live module still carries its adapter
    assert any("lora_A" in n for n, _ in module.model.named_parameters())


def test_no_val_set_trains(tiny_model_dir, data_dir, tokenizer):
    """val_fraction=0: val_dataloader returns [] and Lightning skips validation; constant schedule."""
    module = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3, warmup_steps=0, schedule="constant")
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=32, batch_size=6, val_fraction=0.0)
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        quiet_trainer(max_steps=3, callbacks=[rec], log_every_n_steps=1).fit(module, datamodule=dm)
    assert len(rec.losses) == 3 and not rec.val_losses
    assert [m["lr"] for m in rec.metrics] == [pytest.approx(1e-3)] * 3


def test_bad_schedule_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="schedule"):
        LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3, schedule="cosine_restarts")


def test_response_only_logits_give_the_hf_loss(tiny_model_dir, data_dir, tokenizer):
    """The loss over response positions only equals transformers' own loss with labels (padding and packing)."""
    module = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3)
    assert module._split is not None
    for mode in ("none", "pack"):
        dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=3, val_fraction=0.0, packing=mode,
                            pack_length=128)
        batch = next(iter(dm.train_dataloader()))
        with torch.no_grad():
            ref = module.model(**module.model_inputs(batch), labels=batch["labels"]).loss
            torch.testing.assert_close(module.loss(batch), ref, atol=1e-5, rtol=1e-5)


class StopAt(L.Callback):
    """Interrupt training after `step` optimizer steps (as a killed job would, after its last checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run_steps(base_dir, data_dir, tokenizer, tmp_path, max_steps, ckpt_path=None, every=3, stop_at=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    module = LoRAModule(load_base(base_dir), LORA, lr=5e-3, warmup_steps=2)
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=2, val_fraction=0.0, seed=0,
                        packing="group_by_length")
    rec = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=every)
    callbacks = [rec, ckpt] + ([StopAt(stop_at)] if stop_at else [])
    trainer = quiet_trainer(max_steps=max_steps, max_epochs=-1, callbacks=callbacks, enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, rec, module


def test_resume_continues_at_the_same_step_with_the_same_loss(base_dir, data_dir, tokenizer, tmp_path):
    """9 steps straight vs stopped after 7 (checkpoint at step 7, mid second epoch: 6 batches an epoch) + resume."""
    _, straight, _ = run_steps(base_dir, data_dir, tokenizer, tmp_path / "a", 9, every=100)
    _, first, _ = run_steps(base_dir, data_dir, tokenizer, tmp_path / "b", 9, every=7, stop_at=7)
    assert first.losses == pytest.approx(straight.losses[:7], rel=1e-5)
    last = tmp_path / "b" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 7
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])  # adapter only, not the base
    trainer, resumed, module = run_steps(base_dir, data_dir, tokenizer, tmp_path / "b", 9, ckpt_path=str(last), every=100)
    assert trainer.global_step == 9 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(straight.losses[7:9], rel=1e-4)
    assert module.tokens_seen == resumed.metrics[-1]["train/tokens_seen"] == straight.metrics[8]["train/tokens_seen"]


def test_full_finetune_without_lora(tiny_model_dir, data_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    none = OmegaConf.merge(LORA, {"enabled": False})
    module = LoRAModule(load_base(tiny_model_dir), none, lr=1e-3, warmup_steps=0)
    assert module.num_trainable_params == module.num_total_params
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=32, batch_size=4, val_fraction=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        quiet_trainer(max_steps=2).fit(module, datamodule=dm)
    paths = module.save(tmp_path, tokenizer)
    assert paths["adapter"] is None
    merged = AutoModelForCausalLM.from_pretrained(str(paths["merged"]))
    base = load_base(tiny_model_dir)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, data_dir, tokenizer):
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=4, val_fraction=0.0)
    batch = next(iter(dm.train_dataloader()))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        module = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3, gradient_checkpointing=ckpt)
        module.loss(batch).backward()
        grads.append([p.grad.clone() for p in module.model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


class GradsAtStep(LoRAModule):
    """Records the gradient the optimizer will apply (after the token weighting of the step)."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = [p.grad.clone() for p in self.model.parameters() if p.requires_grad]


def four_unequal_examples(data_dir, tokenizer) -> list[dict]:
    """Four examples, the first two with fewer label tokens than the last two (a mean per micro-batch of 2 then
    differs from the mean over the 4)."""
    dm = ChatDataModule(data_dir, tokenizer, TEMPLATE, max_length=64, batch_size=1, val_fraction=0.0)
    dm.setup()
    by_len = sorted(dm.train_examples, key=lambda e: sum(t != IGNORE_INDEX for t in e["labels"]))
    chosen = by_len[:2] + by_len[-2:]
    counts = [sum(t != IGNORE_INDEX for t in e["labels"]) for e in chosen]
    assert counts[0] + counts[1] < counts[2] + counts[3], counts
    return [[e] for e in chosen]  # units of one example, as the data module's loaders yield them


def test_accumulation_gives_the_token_weighted_gradient(tiny_model_dir, data_dir, tokenizer):
    """Batch 4 x 1 accumulation and batch 2 x 2 accumulations give the same step gradient (fp32, unequal
    lengths), and both equal the gradient of the mean token loss over the 4 examples."""
    from torch.utils.data import DataLoader

    examples = four_unequal_examples(data_dir, tokenizer)
    collate = Collator(tokenizer.pad_token_id, pack=False)
    grads = {}
    for batch_size, accumulate in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        module = GradsAtStep(load_base(tiny_model_dir), LORA, lr=1e-3)
        loader = DataLoader(examples, batch_size=batch_size, collate_fn=collate, shuffle=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=None).fit(
                module, train_dataloaders=loader)
        grads[accumulate] = module.grads
    torch.manual_seed(0)
    direct = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3)
    direct.loss(collate(examples)).backward()
    reference = [p.grad for p in direct.model.parameters() if p.requires_grad]
    assert max(g.abs().max().item() for g in reference) > 1e-4  # a gradient worth comparing
    for one, two, ref in zip(grads[1], grads[2], reference):
        assert (one - two).abs().max().item() <= 1e-6
        assert (one - ref).abs().max().item() <= 1e-6


def test_val_loss_is_the_token_weighted_mean_over_the_set(tiny_model_dir, data_dir, tokenizer):
    from torch.utils.data import DataLoader

    examples = four_unequal_examples(data_dir, tokenizer)
    collate = Collator(tokenizer.pad_token_id, pack=False)
    module = LoRAModule(load_base(tiny_model_dir), LORA, lr=1e-3)
    loader = DataLoader(examples, batch_size=2, collate_fn=collate, shuffle=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        (result,) = quiet_trainer().validate(module, dataloaders=loader, verbose=False)
    with torch.no_grad():
        whole = module.loss(collate(examples)).item()
        per_batch = [module.loss(collate(examples[i:i + 2])).item() for i in (0, 2)]
    assert abs(sum(per_batch) / 2 - whole) > 1e-3  # a mean of batch means would differ
    assert result["val/loss"] == pytest.approx(whole, abs=1e-5)
