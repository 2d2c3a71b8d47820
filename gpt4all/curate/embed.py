"""Text embeddings for the diversity measures and the maps.

Default: TF-IDF (word 1-2 grams) reduced by TruncatedSVD (LSA), L2-normalised: no model, a few seconds for
20k texts. Option `kind: model`: mean-pooled last hidden states of the configured model (gpt4all.core.models).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def tfidf_svd(texts: list[str], dim: int = 64, max_features: int = 20000, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(max_features=max_features, ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(texts) > 50
                        else 1, dtype=np.float32).fit_transform(texts)
    k = max(1, min(dim, x.shape[1] - 1, len(texts) - 1))
    z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(x) if k >= 2 else x.toarray()[:, :1]
    return _unit(np.asarray(z, np.float32))


def model_mean_pool(texts: list[str], model_cfg: Any, cache_dir: str, max_length: int = 256,
                    batch_size: int = 16) -> np.ndarray:
    import torch

    from gpt4all.core.models import load_model, load_tokenizer

    tok, model = load_tokenizer(model_cfg, cache_dir), load_model(model_cfg, cache_dir).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)
            h = model(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
    return _unit(np.concatenate(out))


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def embed(texts: list[str], cfg: Any, model_cfg: Any = None, cache_dir: str | None = None, seed: int = 0) -> np.ndarray:
    """Unit vectors, one per text, as `curation.embedding` says."""
    if cfg.kind == "tfidf":
        return tfidf_svd(texts, cfg.dim, cfg.max_features, seed)
    if cfg.kind == "model":
        if model_cfg is None:
            raise ValueError("curation.embedding.kind=model needs the `model` config node")
        return model_mean_pool(texts, model_cfg, cache_dir, cfg.max_length, cfg.batch_size)
    raise ValueError(f"curation.embedding.kind must be 'tfidf' or 'model', got {cfg.kind!r}")
