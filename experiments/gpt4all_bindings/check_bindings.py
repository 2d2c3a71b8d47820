"""Load a GGUF in Nomic's GPT4All Python bindings and answer one prompt greedily; print the result as JSON.

Run it with the interpreter of a SEPARATE venv that has Nomic's `gpt4all` package (its import name collides
with this project's package, so it must never be installed in the project's environment):

    python3 -m venv /tmp/nomic && /tmp/nomic/bin/pip install gpt4all
    /tmp/nomic/bin/python experiments/gpt4all_bindings/check_bindings.py MODEL.gguf

The prompt is wrapped in SmolLM2's ChatML turn by hand: the 2.8 bindings do not read the GGUF's Jinja chat
template (the desktop app >= 3.5 does).
"""

import json
import os
import sys
from importlib.metadata import version

from gpt4all import (
    GPT4All,  # Nomic's bindings (this script is not run in the project's venv)
)

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
TURN = "<|im_start|>user\n{0}<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    path = os.path.abspath(sys.argv[1])
    prompt = sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France?"
    model = GPT4All(os.path.basename(path), model_path=os.path.dirname(path), allow_download=False, device="cpu",
                    n_threads=2)
    with model.chat_session(system_prompt=SYSTEM, prompt_template=TURN):
        answer = model.generate(prompt, max_tokens=64, temp=0.0, top_k=1)
    print(json.dumps({"file": path, "bindings": f"gpt4all {version('gpt4all')}",
                      "prompt": prompt, "answer": answer}))


if __name__ == "__main__":
    main()
