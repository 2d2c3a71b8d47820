"""Stage `train`: LoRA finetuning of a causal LM on the curated prompt/response pairs (Lightning)."""
