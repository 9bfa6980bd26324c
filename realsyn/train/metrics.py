"""Evaluation metrics on arrays (no files, no models): top-k and per-class accuracy, recall@k."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each row's correct column: how many columns score strictly higher, so
    ties count in the row's favour."""
    right = scores[np.arange(len(scores)), correct]
    return (scores > right[:, None]).sum(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k best-scored classes."""
    return float((ranks(scores, labels) < k).mean()) if len(labels) else 0.0


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy of each class (over the rows whose label it is)."""
    return {c: float((pred[labels == i] == i).mean()) if (labels == i).any() else 0.0 for i, c in enumerate(classes)}


def classification(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, object]:
    """top1, top5, per-class top-1 and their mean, and chance (1 / classes)."""
    per_class = per_class_accuracy(scores.argmax(axis=1), labels, classes)
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, min(5, len(classes))),
            "mean_per_class": float(np.mean(list(per_class.values()))), "chance": 1 / len(classes),
            "per_class": per_class}


def recalls(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
            ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Recall@k both ways; text j is a caption of image `text_image[j]`. Image -> text: one of the
    image's captions within the top k texts; text -> image: its image within the top k images."""
    sims = text_emb @ image_emb.T  # (texts, images)
    t2i = ranks(sims, text_image)
    text_rank = ranks(sims.T[text_image], np.arange(len(text_image)))  # rank of each caption in its image's row
    i2t = np.full(len(image_emb), len(text_emb))
    np.minimum.at(i2t, text_image, text_rank)
    return {"image_to_text": {f"R@{k}": float((i2t < k).mean()) for k in ks},
            "text_to_image": {f"R@{k}": float((t2i < k).mean()) for k in ks}}
