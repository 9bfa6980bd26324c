"""The built-in demo corpus: deterministic, real photos of usable size, enough documents."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from realsyn.demo import MIN_SIDE, load_corpus, materialize
from realsyn.extract.images import hamming, inspect_image
from realsyn.extract.sentences import sentence_reason, split_sentences, text_hash


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_materialize_is_deterministic(tmp_path):
    a = _files(materialize(tmp_path / "a"))
    b = _files(materialize(tmp_path / "b"))
    assert a == b
    assert _files(materialize(tmp_path / "a")) == a  # re-running over the same folder


def test_documents_and_images(tmp_path):
    out = materialize(tmp_path / "corpus")
    pages = sorted(out.glob("*.html"))
    assert len(pages) >= 10 and len(pages) == len(load_corpus())
    used = set()
    for page in pages:
        text = page.read_text("utf-8")
        assert text.count("<p>") >= 2 and "<figure>" in text
        srcs = re.findall(r'<img src="([^"]+)" alt="[^"]+">', text)
        assert len(srcs) == 1
        used.update(srcs)
    images = sorted((out / "images").iterdir())
    assert {f"images/{p.name}" for p in images} == used
    for p in images:
        with Image.open(p) as im:
            im.load()
            assert min(im.size) >= MIN_SIDE, p.name
        assert inspect_image(p.read_bytes()).reason is None, p.name


def test_corpus_has_work_for_the_filters_and_dedup(tmp_path):
    docs = load_corpus()
    sources = [d["image"]["source"] for d in docs]
    assert any(sources.count(s) >= 2 for s in sources)  # an image used in two documents
    # a resized copy is a perceptual near-duplicate of its original
    out = materialize(tmp_path / "corpus")
    checks = {p.stem: inspect_image(p.read_bytes()) for p in (out / "images").iterdir()}
    small = [name for name in checks if name.endswith("pct")]
    assert small and all(hamming(checks[n].phash, checks[n.rsplit("-", 1)[0]].phash) <= 4 for n in small)
    sentences = [s for d in docs for p in d["paragraphs"] for s in split_sentences(p)]
    hashes = [text_hash(s) for s in sentences]
    assert len(set(hashes)) < len(hashes)  # near-identical sentences across documents
    reasons = [sentence_reason(s) for s in sentences]
    assert reasons.count(None) >= 0.8 * len(reasons)
    assert {"has_url", "has_emoji", "cat_action"} <= set(reasons)
