"""`realsyn eval`: zero-shot classification, linear probe and image-text retrieval of any model.

A model is a run folder or checkpoint of `realsyn train`, or a joint embedder of the model
registry (`bridge`, `hf:DIR`, `open_clip:ARCH:WEIGHTS`), so trained and untrained models are
scored on the same data with the same code. Every task returns a flat JSON-ready dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from realsyn.io.readers import InputError
from realsyn.models import registry
from realsyn.models.base import Embedder
from realsyn.runtime.progress import bar
from realsyn.train import evalsets, metrics

TASKS = ("zeroshot", "linear-probe", "retrieval")
# A subset of the CLIP paper's CIFAR prompt ensemble.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "ensemble": ("a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
                 "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
                 "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}."),
    "photo": ("a photo of a {}.",),
    "plain": ("{}",),
}
BATCH = 64


class RunEmbedder:
    """A model trained by `realsyn train` as an Embedder (float32, L2-normalised)."""

    def __init__(self, path: Path) -> None:
        import torch

        from realsyn.train.checkpoint import load_model

        self.torch = torch
        self.model, state = load_model(path)
        self.name = f"{path} (step {state['step']}, {state['config']['model']})"
        self.dim = int(state["config"]["embed_dim"])

    def _embed(self, items: Sequence[Any], prepare: Callable, encode: Callable) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        with self.torch.inference_mode():
            for i in range(0, len(items), BATCH):
                x = encode(prepare(items[i:i + BATCH]))
                out.append(self.torch.nn.functional.normalize(x.float(), dim=-1).numpy())
        return np.concatenate(out)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self._embed(images, self.model.image_inputs, self.model.encode_image)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self.model.text_inputs, self.model.encode_text)


def load_encoder(spec: str, device: str = "auto") -> Embedder:
    """A run folder / checkpoint file, else a `joint` model of the registry (`bridge`, `hf:DIR`)."""
    if Path(spec).exists():
        return RunEmbedder(Path(spec))
    name = spec.partition(":")[0]
    if name not in registry.available("joint"):
        raise registry.ModelError(f"no run folder or model '{spec}'; give a run folder, a checkpoint "
                                  f"or one of: {', '.join(registry.available('joint'))}")
    return registry.load("joint", spec, device)


def embed_images(enc: Embedder, images: Sequence[bytes], desc: str = "embed images") -> np.ndarray:
    """Image embeddings in chunks, with a progress bar."""
    out = [np.zeros((0, enc.dim), np.float32)]
    with bar(desc, "img", len(images)) as progress:
        for i in range(0, len(images), 256):
            out.append(np.asarray(enc.embed_images(images[i:i + 256]), np.float32))
            progress.update(len(out[-1]))
    return np.concatenate(out)


def class_embeddings(enc: Embedder, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One normalised text embedding per class: the mean over the prompt templates."""
    emb = enc.embed_texts([t.format(c) for c in classes for t in templates]).reshape(len(classes), len(templates), -1)
    mean = emb.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def zeroshot(enc: Embedder, data: evalsets.Labelled, templates: Sequence[str]) -> dict[str, Any]:
    scores = embed_images(enc, data.images) @ class_embeddings(enc, data.classes, templates).T
    return {"n": len(data.labels), "templates": len(templates), **metrics.classification(scores, data.labels, data.classes)}


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, seed: int = 0,
              grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> Any:
    """Logistic regression on frozen features; C picked on a seeded 20% hold-out of the training
    split, then refitted on all of it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    fit_x, val_x, fit_y, val_y = train_test_split(train_x, train_y, test_size=0.2, random_state=seed, stratify=train_y)
    best = max(grid, key=lambda c: LogisticRegression(C=c, max_iter=2000).fit(fit_x, fit_y).score(val_x, val_y))
    return LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y)


def linear_probe(enc: Embedder, train: evalsets.Labelled, test: evalsets.Labelled, seed: int = 0) -> dict[str, Any]:
    if train.classes != test.classes:
        raise InputError("linear probe: train/ and test/ must have the same class folders")
    probe = fit_probe(embed_images(enc, train.images, "embed train"), train.labels, seed)
    scores = probe.decision_function(embed_images(enc, test.images, "embed test"))
    return {"n_train": len(train.labels), "n": len(test.labels), "C": float(probe.C),
            **metrics.classification(scores, test.labels, test.classes)}


def retrieval(enc: Embedder, data: evalsets.Captioned) -> dict[str, Any]:
    image_emb = embed_images(enc, data.images)
    rec = metrics.recalls(image_emb, enc.embed_texts(data.captions), data.caption_image)
    return {"images": len(data.images), "texts": len(data.captions), **rec,
            "mean_recall": float(np.mean([v for side in rec.values() for v in side.values()]))}


def check(task: str, data: Path) -> None:
    """Raise InputError unless `task` is known and `data` has the layout it needs."""
    if task not in TASKS:
        raise InputError(f"unknown task '{task}'; tasks: {', '.join(TASKS)}")
    if not data.exists():
        raise InputError(f"eval data not found: {data}")
    if task == "linear-probe" and not ((data / "train").is_dir() and (data / "test").is_dir()):
        raise InputError(f"linear probe needs {data}/train/ and {data}/test/ class folders")


def evaluate(model: str, task: str, data: Path, limit: int | None = None, templates: str = "ensemble",
             device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Run one task; `limit` caps images per class (classification) or images (retrieval)."""
    check(task, data)
    if templates not in TEMPLATES:
        raise InputError(f"unknown templates '{templates}'; choose {', '.join(TEMPLATES)}")
    enc = load_encoder(model, device)
    if task == "zeroshot":
        out = zeroshot(enc, evalsets.load_folder(evalsets.split_folder(data, "test"), limit), TEMPLATES[templates])
    elif task == "linear-probe":
        out = linear_probe(enc, evalsets.load_folder(data / "train", limit), evalsets.load_folder(data / "test", limit), seed)
    else:
        out = retrieval(enc, evalsets.load_captions(data, limit))
    return {"task": task, "model": model, "model_name": getattr(enc, "name", model), "data": str(data), **out}


def summary(result: dict[str, Any]) -> str:
    """A few human-readable lines of one result."""
    head = f"{result['task']}  model={result['model']}  data={result['data']}"
    if "top1" in result:
        classes = "  ".join(f"{c}={a:.2f}" for c, a in result["per_class"].items())
        return (f"{head}\n  top1={result['top1']:.4f}  top5={result['top5']:.4f}  mean/class={result['mean_per_class']:.4f}"
                f"  chance={result['chance']:.4f}  n={result['n']}\n  {classes}")
    sides = "\n".join(f"  {side:13} " + "  ".join(f"{k}={v:.4f}" for k, v in result[side].items())
                      for side in ("image_to_text", "text_to_image"))
    return f"{head}  images={result['images']} texts={result['texts']}\n{sides}"
