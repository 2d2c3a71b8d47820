"""evaluate: ground-truth perplexity of reference responses, per model, clipped at 100."""
