#!/usr/bin/env bash
# The base_to_assistant study: the pipeline, then effect sizes and fixed-prompt answers; results copied here.
# Usage (shared machine): flock /tmp/gpt4all-heavy.lock bash experiments/base_to_assistant/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export WANDB_MODE=offline
OUT=outputs/base_to_assistant
HERE=experiments/base_to_assistant
load_start=$(cut -d' ' -f1-3 /proc/loadavg); start=$(date +%s)
gpt4all-pipeline experiment=base_to_assistant \
  eval.path=../shared/data/self_instruct/user_oriented_instructions.jsonl hydra.run.dir=$OUT
pipeline_s=$(( $(date +%s) - start ))
python $HERE/effect.py $OUT/evaluate/results.json $HERE/effect.json > $HERE/results.md
python $HERE/answers.py $OUT > $HERE/answers.md
cp $OUT/summary.json $OUT/config.yaml $OUT/curate/funnel.md $OUT/evaluate/perplexity.png $HERE/
cat > $HERE/run.json <<JSON
{"pipeline_seconds": $pipeline_s, "loadavg_start": "$load_start", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)", "cores": $(nproc),
 "note": "2 cores shared with other engineers' light jobs (heavy jobs serialised by a lock)"}
JSON
