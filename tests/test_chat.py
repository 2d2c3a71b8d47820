"""gpt4all-chat: streams an answer in the GGUF's chat template; one-shot mode for scripts; clear errors."""

from __future__ import annotations

import subprocess
import sys

import jinja2
import pytest

from gpt4all import chat
from gpt4all.core.models import smollm2_gguf_path

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm():
    model = chat.load_chat_model(chat.resolve_model(smollm2_gguf_path()), n_ctx=512)
    yield model
    model.close()


@pytest.fixture(scope="module")
def expected(llm) -> str:
    """The greedy answer to the prompt rendered by the GGUF's own chat template (system prompt included)."""
    prompt = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    llm.reset()
    return llm(prompt, max_tokens=16, temperature=0.0)["choices"][0]["text"]


def test_streams_pieces_in_the_chat_template(llm, expected):
    pieces = list(chat.stream_reply(llm, [{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0.0))
    assert len(pieces) > 2  # streamed, not one block
    assert "".join(pieces) == expected and expected.strip()
    assert "<|im_end|>" not in "".join(pieces)


def test_stops_at_the_end_of_turn_token(llm):
    pieces = list(chat.stream_reply(llm, [{"role": "user", "content": "Reply with the single word: yes"}],
                                    max_tokens=200, temperature=0.0))
    assert 0 < len(pieces) < 200 and "<|im" not in "".join(pieces)


def test_one_shot_cli(tmp_path, expected):
    proc = subprocess.run([sys.executable, "-m", "gpt4all.chat", str(smollm2_gguf_path()), "-p", QUESTION,
                           "--temperature", "0", "--max-tokens", "16"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == expected + "\n"
    bad = subprocess.run([sys.executable, "-m", "gpt4all.chat", str(tmp_path / "missing.gguf"), "-p", "x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "missing.gguf" in bad.stderr
