"""extract + embed on the real ZIM, with a resized copy of a kept image injected into the corpus."""

import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from realsyn.config import load_config
from realsyn.pipeline import run
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace
from realsyn.tables import read_embeddings

pytestmark = pytest.mark.slow
NO_PPL = {"extract.sentences.perplexity": False}  # the perplexity filter is tested on its own


def _largest_kept_image(zim, tmp_path) -> bytes:
    ctx = Context(Workspace(tmp_path / "probe"), load_config(None, NO_PPL), LocalExecutor(1), [zim])
    run(ctx, until="extract")
    images = pq.read_table(tmp_path / "probe" / "extract" / "images")
    kept = images.filter(pc.equal(images["status"], "kept")).sort_by([("width", "descending")])
    blobs = pq.read_table(tmp_path / "probe" / "extract" / "blobs")
    return dict(zip(blobs["image_id"].to_pylist(), blobs["data"].to_pylist()))[kept["image_id"][0].as_py()]


def test_embed_covers_every_kept_item_and_catches_a_resized_copy(tmp_path, data_dir):
    zim = data_dir / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
    original = Image.open(io.BytesIO(_largest_kept_image(zim, tmp_path))).convert("RGB")
    copy = original.resize((original.width * 9 // 10, original.height * 9 // 10))
    html = tmp_path / "injected"
    html.mkdir()
    copy.save(html / "copy.jpg", quality=90)
    (html / "page.html").write_text('<p>A page that reuses a picture it found elsewhere.</p><img src="copy.jpg">')

    work = tmp_path / "w"
    ctx = Context(Workspace(work), load_config(None, NO_PPL), LocalExecutor(2), [zim, html])
    with ctx.executor:
        counts = run(ctx, until="embed")
    images = pq.read_table(work / "extract" / "images")
    injected = images.filter(pc.equal(images["source"], "page.html")).to_pylist()
    assert len(injected) == 1
    dedup = {r["image_id"]: r for r in pq.read_table(work / "embed" / "dedup_images.parquet").to_pylist()}
    row = injected[0]
    reason = row["reason"] or dedup[row["image_id"]]["reason"]
    print(f"\ninjected copy: extract reason={row['reason']}, embed counts={counts['embed']}")
    assert reason in {"near_duplicate", "semantic_duplicate"}

    for kind, id_col in (("images", "image_id"), ("sentences", "sentence_id")):
        table = pq.read_table(work / "extract" / kind)
        kept = set(table.filter(pc.equal(table["status"], "kept"))[id_col].to_pylist())
        ids, emb = read_embeddings(sorted((work / "embed" / kind).glob("part-*.parquet")), id_col)
        assert set(ids) == kept and len(ids) == len(kept)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=2e-3)
        assert counts["embed"][kind]["read"] == len(kept)
