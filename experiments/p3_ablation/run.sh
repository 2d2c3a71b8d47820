#!/usr/bin/env bash
# p3_ablation: the same data with and without the homogeneous P3 source, each arm trained for the same number of
# steps of packed rows (equal training tokens) with 3 seeds; every model scored on Self-Instruct; a CI over seeds.
# Usage: bash experiments/p3_ablation/run.sh [collect|curate|train|evaluate|analyze|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export WANDB_MODE=offline
OUT=outputs/p3_ablation
SEEDS="${SEEDS:-1 2 3}"
STEPS="${STEPS:-24}"          # optimizer steps of 4 packed rows x 512 tokens: equal training tokens in both arms
LIMIT="${LIMIT:-126}"         # Self-Instruct items scored per model (the first LIMIT of 252)
DATA="data/source=[sample,p3_local] data.sources.p3_local.sample_size=200"
TRAIN="train.packing=pack train.pack_length=512 train.batch_size=4 train.warmup_steps=3 trainer.max_steps=$STEPS \
  trainer.max_epochs=-1 trainer.precision=bf16-mixed trainer.check_val_every_n_epoch=1000 ~callbacks.generation"
phase="${1:-all}"

if [[ $phase == collect || $phase == all ]]; then
  gpt4all-collect $DATA hydra.run.dir=$OUT/collect
fi
if [[ $phase == curate || $phase == all ]]; then
  gpt4all-curate $DATA curate.input_dir=$OUT/collect 'curation.diversity.keep_sources=[p3]' hydra.run.dir=$OUT/with_p3/curate
  gpt4all-curate $DATA curate.input_dir=$OUT/collect 'curation.diversity.drop_sources=[p3]' hydra.run.dir=$OUT/without_p3/curate
fi
if [[ $phase == train || $phase == all ]]; then
  for seed in $SEEDS; do
    for arm in with_p3 without_p3; do
      [[ -f $OUT/$arm/train_seed$seed/manifest.json ]] && continue
      gpt4all-train $TRAIN seed=$seed train.data_dir=$OUT/$arm/curate hydra.run.dir=$OUT/$arm/train_seed$seed
    done
  done
fi
if [[ $phase == evaluate || $phase == all ]]; then
  MODELS=(); PAIRS=()
  for seed in $SEEDS; do
    for arm in with_p3 without_p3; do
      MODELS+=("+evaluate.models.${arm}_s$seed={kind: run_dir, path: $OUT/$arm/train_seed$seed}")
    done
    PAIRS+=("[without_p3_s$seed,with_p3_s$seed]")
  done
  gpt4all-evaluate eval=self_instruct eval.path=../shared/data/self_instruct/user_oriented_instructions.jsonl \
    eval.limit=$LIMIT "${MODELS[@]}" "evaluate.compare=[$(IFS=,; echo "${PAIRS[*]}")]" hydra.run.dir=$OUT/evaluate
fi
if [[ $phase == analyze || $phase == all ]]; then
  python experiments/p3_ablation/analyze.py $OUT
fi
