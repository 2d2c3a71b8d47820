#!/usr/bin/env bash
# p3_ablation: the same pipeline with and without the homogeneous P3 source; paired test on Self-Instruct.
set -e
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export WANDB_MODE=offline
OUT=outputs/p3_ablation
COMMON="data/source=[sample,p3_local] data.sources.p3_local.sample_size=200 pipeline.stages=[collect,curate,train]"
gpt4all-pipeline $COMMON 'curation.diversity.keep_sources=[p3]' hydra.run.dir=$OUT/with_p3
gpt4all-pipeline $COMMON 'curation.diversity.drop_sources=[p3]' hydra.run.dir=$OUT/without_p3
gpt4all-evaluate eval=self_instruct eval.path=../shared/data/self_instruct/user_oriented_instructions.jsonl \
  "+evaluate.models.with_p3={kind: run_dir, path: $OUT/with_p3/train}" \
  "+evaluate.models.without_p3={kind: run_dir, path: $OUT/without_p3/train}" \
  'evaluate.compare=[[without_p3,with_p3],[with_p3,base:smollm2_135m],[without_p3,base:smollm2_135m]]' \
  hydra.run.dir=$OUT/evaluate
