"""The paper's Atlas maps without Atlas: 2-D t-SNE of a sample, coloured by source (Figure 1) and by topic
(Figure 2), topics from k-means with c-TF-IDF keywords, and the list of highly homogeneous clusters.

Writes map_by_source.png, map_by_topic.png, map.html (plotly, self-contained), topics.json, topics.md and
points.csv (one row per sampled point) into the given directory.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from gpt4all.curate.diversity import mean_pairwise_cosine


def tsne_2d(emb: np.ndarray, method: str = "opentsne", perplexity: float = 30.0, seed: int = 0,
            n_jobs: int = 1, iterations: int = 300) -> np.ndarray:
    """2-D t-SNE; perplexity is capped at (n - 1) / 3 so small samples still map."""
    n = len(emb)
    if n < 5:
        return np.c_[np.arange(n, dtype=float), np.zeros(n)]
    perplexity = min(perplexity, (n - 1) / 3.0)
    if method == "opentsne":
        from openTSNE import TSNE

        return np.asarray(TSNE(perplexity=perplexity, n_jobs=n_jobs, random_state=seed, n_iter=iterations,
                               early_exaggeration_iter=max(50, iterations // 2)).fit(emb))
    if method == "sklearn":
        from sklearn.manifold import TSNE

        return TSNE(perplexity=perplexity, random_state=seed, init="pca", max_iter=max(250, iterations),
                    n_jobs=n_jobs).fit_transform(emb)
    raise ValueError(f"curation.maps.tsne must be 'opentsne' or 'sklearn', got {method!r}")


def ctfidf_keywords(texts: list[str], labels: np.ndarray, k: int, top: int) -> dict[int, list[str]]:
    """Top words per cluster by class-based TF-IDF (BERTopic's c-TF-IDF: tf per class x log(1 + A / f_t))."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [" ".join(t for t, lab in zip(texts, labels) if lab == c) for c in range(k)]
    vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", max_features=50000)
    counts = vec.fit_transform(docs).toarray().astype(float)
    words = vec.get_feature_names_out()
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    avg = counts.sum() / max(1, k)
    score = tf * np.log1p(avg / np.maximum(counts.sum(axis=0), 1))
    return {c: [str(words[j]) for j in np.argsort(-score[c])[:top] if score[c, j] > 0] for c in range(k)}


def topics(texts: list[str], emb: np.ndarray, sources: list[str], n_topics: int, top_keywords: int,
           homogeneous_similarity: float, min_cluster: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """k-means topics: (label per point, per-topic summary with keywords, size, sources, similarity)."""
    from sklearn.cluster import KMeans

    k = max(1, min(n_topics, len(texts) // 2))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb) if k > 1 else np.zeros(len(texts), int)
    words = ctfidf_keywords(texts, labels, k, top_keywords)
    out = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        src, counts = np.unique(np.asarray(sources)[members], return_counts=True)
        sim = mean_pairwise_cosine(emb[members])
        out.append({"topic": c, "name": " ".join(words[c][:3]) or f"topic {c}", "keywords": words[c],
                    "size": len(members), "mean_similarity": None if np.isnan(sim) else round(sim, 4),
                    "sources": {str(s): int(n) for s, n in zip(src, counts)},
                    "homogeneous": bool(len(members) >= min_cluster and sim >= homogeneous_similarity)})
    return labels, out


def _scatter_png(path: Path, xy: np.ndarray, groups: list[str], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    names = sorted(set(groups), key=lambda g: -groups.count(g))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    g = np.asarray(groups)
    for i, name in enumerate(names):
        m = g == name
        ax.scatter(xy[m, 0], xy[m, 1], s=3, alpha=0.6, color=cmap(i % cmap.N), label=f"{name} ({m.sum()})")
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _html(path: Path, xy: np.ndarray, sources: list[str], topic_names: list[str], hover: list[str],
          kept: np.ndarray) -> Path:
    import plotly.express as px

    parts = []
    for i, (title, color, mask) in enumerate([
        ("Candidate data by source (Figure 1)", sources, np.ones(len(xy), bool)),
        ("Final data by topic (Figure 2)", topic_names, kept),
    ]):
        idx = np.flatnonzero(mask)
        fig = px.scatter(x=xy[idx, 0], y=xy[idx, 1], color=[color[j] for j in idx],
                         hover_name=[hover[j] for j in idx], title=title, opacity=0.7, height=750)
        fig.update_traces(marker={"size": 4})
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    path.write_text("<html><head><meta charset='utf-8'><title>gpt4all-lab curation map</title></head><body>"
                    + "".join(parts) + "</body></html>", encoding="utf-8")
    return path


def write_maps(out: Path, texts: list[str], sources: list[str], kept: np.ndarray, emb: np.ndarray, cfg: Any,
               seed: int = 0, n_jobs: int = 1) -> dict[str, Any]:
    """Compute and write every map artefact; returns paths and the topic summaries."""
    out.mkdir(parents=True, exist_ok=True)
    xy = tsne_2d(emb, cfg.tsne, cfg.perplexity, seed, n_jobs, cfg.iterations)
    labels, tops = topics(texts, emb, sources, cfg.n_topics, cfg.top_keywords, cfg.homogeneous_similarity,
                          cfg.min_cluster_size, seed)
    names = [f"{t['topic']}: {t['name']}" for t in tops]
    topic_of = [names[c] for c in labels]
    paths = {
        "map_by_source": _scatter_png(out / "map_by_source.png", xy, sources,
                                      f"Candidate data by source (t-SNE, {len(xy)} points)"),
        "map_by_topic": _scatter_png(out / "map_by_topic.png", xy[kept], [topic_of[i] for i in np.flatnonzero(kept)],
                                     f"Final data by topic (t-SNE, {int(kept.sum())} points)"),
    }
    with (out / "points.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "source", "topic", "kept", "text"])
        for i in range(len(xy)):
            w.writerow([f"{xy[i, 0]:.3f}", f"{xy[i, 1]:.3f}", sources[i], int(labels[i]), int(kept[i]), texts[i][:200]])
    paths["points"] = out / "points.csv"
    if cfg.html:
        hover = [t[:160].replace("\n", " ") for t in texts]
        paths["map_html"] = _html(out / "map.html", xy, sources, topic_of, hover, kept)
    homog = sorted((t for t in tops if t["homogeneous"]), key=lambda t: -(t["mean_similarity"] or 0))
    md = ["# Topics", "", "| topic | size | mean similarity | sources | keywords |", "|---|---|---|---|---|"]
    md += [f"| {t['topic']}{' (homogeneous)' if t['homogeneous'] else ''} | {t['size']} | {t['mean_similarity']} | "
           f"{', '.join(f'{s} {n}' for s, n in t['sources'].items())} | {', '.join(t['keywords'])} |" for t in tops]
    (out / "topics.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return {"paths": paths, "topics": tops, "homogeneous_clusters": homog, "points": len(xy)}
