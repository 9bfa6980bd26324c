"""Embedding throughput of the default models against the naive route, measured in the same run.

- Images: the `bridge` joint embedder end to end from JPEG bytes (decode, resize, EfficientNet-Lite0
  in onnxruntime, batched, label bridge). Inputs: the 13 bundled real photos, each re-encoded as JPEG
  (quality 90) at longer sides 384, 640 and 1024 px, cycled to `--images`.
  Naive: one image at a time, decode + preprocess + the eager PyTorch module.
- Sentences: `minilm` (batch 64). Inputs: sentences of 5-30 words from the paragraphs of the Ray
  Charles Wikipedia ZIM in shared/data (libzim + lxml), falling back to scikit-learn dataset
  descriptions when the ZIM is absent. Naive: `SentenceTransformer.encode([s])` one sentence at a time.

Best of `--repeats` after a warm-up. Targets (2 cores): >= 50 images/s, >= 300 sentences/s,
image speedup >= 3x.

    python benchmarks/embed.py [--images 256] [--sentences 2000] [--naive-images 48]
                               [--naive-sentences 300] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
DEFAULT_ZIM = ROOT.parent / "shared" / "data" / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
SIDES = (384, 640, 1024)


def image_inputs(n: int) -> list[bytes]:
    from PIL import Image

    from realsyn.models.imaging import sample_photos

    variants = []
    for data in sample_photos().values():
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for side in SIDES:
            scale = side / max(image.size)
            resized = image.resize((round(image.width * scale), round(image.height * scale)),
                                   Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            resized.save(buf, "JPEG", quality=90)
            variants.append(buf.getvalue())
    return [variants[i % len(variants)] for i in range(n)]


def _split(text: str) -> list[str]:
    text = re.sub(r"\[\d+\]", "", " ".join(text.split()))
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", text) if 5 <= len(s.split()) <= 30]


def sentence_inputs(n: int, zim: Path) -> tuple[list[str], str]:
    """`n` real sentences (cycled if the source has fewer) and the name of their source."""
    sentences: list[str] = []
    if zim.is_file():
        import lxml.html
        from libzim.reader import Archive

        archive, source = Archive(str(zim)), zim.name
        for i in range(archive.all_entry_count):
            entry = archive._get_entry_by_id(i)
            if entry.is_redirect or not entry.get_item().mimetype.startswith("text/html"):
                continue
            doc = lxml.html.fromstring(bytes(entry.get_item().content))
            for p in doc.iter("p"):
                sentences += _split(p.text_content())
            if len(set(sentences)) >= n:
                break
    else:
        from sklearn import datasets

        source = "scikit-learn dataset descriptions"
        for loader in (datasets.load_iris, datasets.load_diabetes, datasets.load_digits,
                       datasets.load_wine, datasets.load_breast_cancer, datasets.load_linnerud):
            sentences += _split(loader().DESCR)
    unique = list(dict.fromkeys(sentences))
    return [unique[i % len(unique)] for i in range(n)], source


def rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Items per second, best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--naive-images", type=int, default=48)
    ap.add_argument("--naive-sentences", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zim", type=Path, default=DEFAULT_ZIM)
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args()

    import numpy as np
    import torch

    from realsyn.models import effnet, load
    from realsyn.models.imaging import cpu_count

    images = image_inputs(a.images)
    sentences, source = sentence_inputs(a.sentences, a.zim)
    bridge, minilm = load("joint", "bridge", "cpu"), load("text", "minilm", "cpu")
    net = effnet.load_torch_model()

    def naive_images() -> None:
        with torch.inference_mode():
            for data in images[:a.naive_images]:
                net(torch.from_numpy(effnet.to_input(effnet.preprocess(data)[None])))

    def naive_sentences() -> None:
        for s in sentences[:a.naive_sentences]:
            minilm.model.encode([s], normalize_embeddings=True, show_progress_bar=False)

    bridge.embed_images(images[:16]), minilm.embed_texts(sentences[:64]), naive_images()  # warm-up
    r = {
        "images_per_s": rate(lambda: bridge.embed_images(images), len(images), a.repeats),
        "naive_images_per_s": rate(naive_images, min(a.naive_images, len(images)), a.repeats),
        "sentences_per_s": rate(lambda: minilm.embed_texts(sentences), len(sentences), a.repeats),
        "naive_sentences_per_s": rate(naive_sentences, min(a.naive_sentences, len(sentences)), a.repeats),
    }
    r = {k: round(v, 1) for k, v in r.items()}
    r["image_speedup"] = round(r["images_per_s"] / r["naive_images_per_s"], 2)
    r["sentence_speedup"] = round(r["sentences_per_s"] / r["naive_sentences_per_s"], 2)
    r.update(n_images=len(images), n_sentences=len(sentences), threads=cpu_count(),
             image_engine=bridge.clf.engine, text_source=source,
             mean_words=round(float(np.mean([len(s.split()) for s in sentences])), 1),
             mean_image_kb=round(sum(map(len, images)) / len(images) / 1024, 1))

    print(f"{'route':<34}{'items/s':>10}{'naive/s':>10}{'speedup':>9}")
    print(f"{'images: bridge (' + r['image_engine'] + ')':<34}{r['images_per_s']:>10}"
          f"{r['naive_images_per_s']:>10}{r['image_speedup']:>8}x")
    print(f"{'sentences: minilm (batch 64)':<34}{r['sentences_per_s']:>10}"
          f"{r['naive_sentences_per_s']:>10}{r['sentence_speedup']:>8}x")
    print(f"{r['n_images']} images ({r['mean_image_kb']} KB avg JPEG), {r['n_sentences']} sentences "
          f"({r['mean_words']} words avg, from {source}), {r['threads']} threads")
    if a.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
