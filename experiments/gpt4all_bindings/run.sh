#!/usr/bin/env bash
# Check that gpt4all-lab's GGUF files load and answer in Nomic's own GPT4All Python bindings.
# The bindings live in a separate venv: their import name `gpt4all` collides with this project's package.
# Usage (from the repo root, project venv active): bash experiments/gpt4all_bindings/run.sh [TRAIN_RUN_DIR]
set -euo pipefail
TRAIN=${1:-outputs/local_smollm2/train}
VENV=${NOMIC_VENV:-/tmp/nomic}
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q gpt4all; }
OUT=outputs/gpt4all_bindings
for q in gguf_f16 gguf_q4_0; do
  gpt4all-quantize quant=$q quant.pre_tokenizer=starcoder quantize.model_dir="$TRAIN" logger=none hydra.run.dir=$OUT/$q
done
for f in $OUT/gguf_f16/model-f16.gguf $OUT/gguf_q4_0/model-q4_0.gguf; do
  "$VENV/bin/python" experiments/gpt4all_bindings/check_bindings.py "$f" 2>/dev/null | tail -1
done
# the same files, the same raw ChatML prompt, greedy, in llama-cpp-python (this project's runtime)
python - $OUT/gguf_f16/model-f16.gguf $OUT/gguf_q4_0/model-q4_0.gguf <<'PY'
import json, sys
from gpt4all.quantize.gguf import generate
system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
turn = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
for f in sys.argv[1:]:
    print(json.dumps({"file": f, "runtime": "llama-cpp-python", "answer": generate(f, system + turn, max_tokens=64)}))
PY
