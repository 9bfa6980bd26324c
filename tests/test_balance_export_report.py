"""balance, export and report on a small fake workspace: real photos (scikit-image / scikit-learn
sample images, several copies with different ids), made-up texts, clustered fake embeddings."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from realsyn.balance import phases, sampling
from realsyn.balance import stage as balance
from realsyn.centroids import sort_by_group
from realsyn.config import ConfigError, load_config
from realsyn.export import stage as export
from realsyn.export.shards import sample_key
from realsyn.models.registry import register
from realsyn.report import stage as report
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace, part_name, write_json, write_table
from realsyn.tables import embedding_table

DIM, PARTS, PER_PART = 16, 3, 24
CLUSTER_SIZES = (36, 18, 12, 6)  # four groups of image embeddings, of very different sizes
SCALES = {"small": 3, "mid": 6, "big": 12}
SCRIPT = "<script>alert('x')</script>"
BAD_BYTES, NO_BLOB, NO_SYNTH, NO_EMB, NO_TEXT = "img-0-05", "img-1-05", "img-2-07", "img-2-08", "img-2-09"
WORDS = ("Ray Charles played the piano in Seattle", "a red bus waits near the London Bridge station",
         "the astronaut Eileen Collins waves in her orange suit", "a cup of coffee on a wooden table in Paris",
         "Chelsea the cat sleeps on the sofa", "the Saturn rocket stands at Cape Canaveral before launch")


def _photos() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *load_sample_images().images]


def _encode(pixels: np.ndarray, index: int) -> bytes:
    """A copy of a photo: cropped differently per index, small, in a format that varies."""
    image = Image.fromarray(pixels).convert("RGB")
    w, h = image.size
    image = image.crop((index % 7 * 4, index % 5 * 4, w - index % 3 * 4, h)).resize((96 + index % 5 * 16, 80 + index % 4 * 16))
    buf = io.BytesIO()
    fmt = {3: "PNG", 4: "WEBP", 5: "GIF"}.get(index % 11, "JPEG")
    image.save(buf, fmt)
    return buf.getvalue()


def _fake_joint(args: str, device: str) -> object:
    """A joint 'model' for the report: hashed bag-of-words text vectors in the image space."""

    class Fake:
        name, dim = "fake", DIM

        def embed_texts(self, texts: list[str]) -> np.ndarray:
            out = np.zeros((len(texts), DIM), np.float32)
            for i, t in enumerate(texts):
                for w in t.lower().split():
                    out[i, sum(map(ord, w)) % DIM] += 1
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

    return Fake()


register("joint", "fake", f"{__name__}:_fake_joint")


def make_workspace(root: Path) -> Path:
    """retrieve/pairs, synth, embed/images, extract/images + blobs and a manifest."""
    rng = np.random.default_rng(7)
    photos = _photos()
    n = PARTS * PER_PART
    group = np.repeat(np.arange(len(CLUSTER_SIZES)), CLUSTER_SIZES)[rng.permutation(n)]
    emb = np.eye(DIM, dtype=np.float32)[group] + rng.normal(0, 0.08, (n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = rng.uniform(0.20, 0.40, n).astype(np.float32)
    for p in range(PARTS):
        rows = range(p * PER_PART, (p + 1) * PER_PART)
        ids = [f"img-{p}-{i:02d}" for i in range(PER_PART)]
        texts = [[f"{WORDS[(r + j) % len(WORDS)]} (view {r}, text {j + 1})" + (f" {SCRIPT}" if r % 9 == 0 and j == 0 else "")
                  for j in range(3)] for r in rows]
        texts = [[] if i == NO_TEXT else t for i, t in zip(ids, texts)]
        top = [[float(sims[r]) - 0.02 * j for j in range(len(t))] for r, t in zip(rows, texts)]
        write_table(pa.table({
            "image_id": ids, "doc_id": [f"doc-{p}-{i // 4}" for i in range(PER_PART)],
            "text_ids": [[f"s{r}-{j}" for j in range(len(t))] for r, t in zip(rows, texts)], "texts": texts,
            "sims": pa.array(top, pa.list_(pa.float32())), "cluster": pa.array([r % 5 for r in rows], pa.int32()),
            "status": ["rejected" if not t else "kept" for t in texts], "reason": [None if t else "no_text" for t in texts],
        }), root / "retrieve" / "pairs" / part_name(p))
        write_table(pa.table({
            "image_id": ids, "caption": [f"a photo number {r}" for r in rows],
            "tags": [["photo", WORDS[r % len(WORDS)].split()[1]] for r in rows],
            "syn_text": ["" if i == NO_SYNTH else f"A clear photo: {WORDS[r % len(WORDS)]}, seen from view {r}." for i, r in zip(ids, rows)],
            "model": ["fake"] * PER_PART, "prompt_version": ["v1"] * PER_PART, "text_index": [0] * PER_PART,
        }), root / "synth" / part_name(p))
        keep = [i != NO_EMB for i in ids]
        write_table(embedding_table([i for i, k in zip(ids, keep) if k], emb[list(rows)][keep], "image_id", "float16"),
                    root / "embed" / "images" / part_name(p))
        blobs = [b"not an image" if i == BAD_BYTES else _encode(photos[r % len(photos)], r) for i, r in zip(ids, rows)]
        meta = [Image.open(io.BytesIO(b)) if i != BAD_BYTES else None for i, b in zip(ids, blobs)]
        write_table(pa.table({
            "image_id": ids, "doc_id": [f"doc-{p}-{i // 4}" for i in range(PER_PART)],
            "url": [f"https://example.org/{i}.jpg" for i in ids], "source": ["fake.parquet"] * PER_PART,
            "width": [m.width if m else 100 for m in meta], "height": [m.height if m else 100 for m in meta],
            "format": [m.format if m else "JPEG" for m in meta], "status": ["kept"] * PER_PART, "reason": [None] * PER_PART,
        }), root / "extract" / "images" / part_name(p))
        write_table(pa.table({"image_id": [i for i in ids if i != NO_BLOB], "data": [b for i, b in zip(ids, blobs) if i != NO_BLOB]}),
                    root / "extract" / "blobs" / part_name(p))
    summary = {"read": n + 10, "kept": n, "rejected": 10, "reasons": {"too_small": 7, "near_duplicate": 3}}
    write_json({"stages": {
        "extract": {"status": "done", "key": "k", "counts": {"parts": PARTS, "images": summary,
                    "sentences": {"read": 900, "kept": 600, "rejected": 300, "reasons": {"too_few_words": 300}}}},
        "embed": {"status": "done", "key": "k", "counts": {"images": {"read": n, "kept": n, "rejected": 0, "reasons": {}}}},
        "retrieve": {"status": "done", "key": "k", "counts": {"images": {"read": n, "kept": n - 1, "rejected": 1, "reasons": {"no_text": 1}}}},
    }}, root / "manifest.json")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("ws") / "work")


def context(root: Path, **overrides) -> Context:
    cfg = load_config(None, {"balance.clusters": 4, "balance.scales": SCALES, "export.samples_per_shard": 8,
                             "models.joint": "fake", "report.gallery": 6, "report.topics": 3, **overrides})
    return Context(Workspace(root), cfg, LocalExecutor(1))


@pytest.fixture(scope="module")
def done(work: Path) -> dict:
    """balance, export and report run once on the shared workspace."""
    ctx = context(work)
    return {"ctx": ctx, **{m.NAME: m.run(ctx, m.stage_key(ctx)) for m in (balance, export, report)}}


def _copy(work: Path, tmp_path: Path) -> Path:
    """A fresh copy of the inputs only (no balance/export/report output)."""
    root = tmp_path / "copy"
    shutil.copytree(work, root, ignore=shutil.ignore_patterns("balance", "export", "report"))
    return root


# --- balance ---------------------------------------------------------------------------------

def test_band_bounds_fixed_quantile_and_off():
    sims = np.linspace(0.0, 1.0, 1001)
    lo, hi = sampling.band_bounds(sims, "quantile", 0.10, 0.95)
    assert (lo, hi) == pytest.approx((0.10, 0.95))
    assert (sampling.band_position(sims, lo, hi) == sampling.IN_BAND).mean() == pytest.approx(0.85, abs=0.002)
    assert sampling.band_bounds(sims, "fixed", 0.51, 0.61) == (0.51, 0.61)
    pos = sampling.band_position(np.array([0.5, 0.51, 0.6, 0.61, 0.62]), 0.51, 0.61)
    assert pos.tolist() == [sampling.BELOW, 0, 0, 0, sampling.ABOVE]
    assert sampling.band_bounds(sims, "off", 0.5, 0.6) == (-np.inf, np.inf)


def _skewed_labels(n: int = 20_000, k: int = 60) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.choice(k, n, p=(w := 1 / np.arange(1, k + 1) ** 1.2) / w.sum())


def test_caps_exact_nested_and_seeded():
    labels = _skewed_labels()
    sizes = np.bincount(labels)
    caps = {"a": 10, "b": 50, "c": 400}
    masks = sampling.select(labels, sampling.draws(len(labels), 0), caps, "cap")
    for name, cap in caps.items():
        assert (sampling.sizes_after(labels, masks[name], len(sizes)) == np.minimum(sizes, cap)).all()
        assert masks[name].sum() == sampling.expected_size(sizes, cap)
    assert not (masks["a"] & ~masks["b"]).any() and not (masks["b"] & ~masks["c"]).any()
    again = sampling.select(labels, sampling.draws(len(labels), 0), caps, "cap")
    other = sampling.select(labels, sampling.draws(len(labels), 1), caps, "cap")
    assert (again["a"] == masks["a"]).all() and (other["a"] != masks["a"]).any()


def test_metaclip_nested_with_the_expected_size():
    labels = np.repeat(np.arange(20), np.arange(1, 21) * 1000)  # clusters of 1,000 .. 20,000
    caps = {"a": 300, "b": 3000}
    masks = sampling.select(labels, sampling.draws(len(labels), 3), caps, "metaclip")
    assert not (masks["a"] & ~masks["b"]).any()
    for name, cap in caps.items():
        assert masks[name].sum() == pytest.approx(sampling.expected_size(np.bincount(labels), cap), rel=0.03)
    kept = sampling.sizes_after(labels, masks["a"], 20)
    assert kept.max() < 1.3 * 300 and kept.min() > 0.7 * 300  # every cluster near t, big ones included


def test_streamed_quantiles_equal_numpys():
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 1000, 4321):
        x = (rng.random(n) - 0.3).astype(np.float32)
        x[: n // 3] = np.round(x[: n // 3], 2)  # ties
        qs = [0.0, 0.1, 0.5, 0.95, 1.0, float(rng.random())]
        halves = [x[: n // 2], x[n // 2:]]
        assert sampling.streamed_quantiles(lambda h=halves: h, n, qs) == [float(np.quantile(x.astype(np.float64), q)) for q in qs]


@pytest.mark.parametrize("method", ["cap", "metaclip"])
def test_streamed_draw_equals_the_draw_in_memory(method):
    """The draw per part against per-cluster bounds (`phases`) keeps exactly what the draw over
    all pairs at once (`sampling.select`) keeps."""
    labels = _skewed_labels()
    sizes, caps = np.bincount(labels), {"a": 10, "b": 50, "c": 400}
    want = sampling.select(labels, sampling.draws(len(labels), 5), caps, method)
    rows = np.arange(len(labels))
    order, offsets = sort_by_group(labels, len(sizes))
    last = np.stack([phases.last_kept(sampling.draws(len(labels), 5)[order], rows[order], offsets, n) for n in caps.values()])
    for a, e in ((0, 777), (777, 15_000), (15_000, len(labels))):  # three parts
        got = phases.keep_masks(phases.draws_from(5, a, e - a), rows[a:e], labels[a:e], sizes, caps, method, last)
        assert all((got[k] == want[k][a:e]).all() for k in caps)


def test_steps_in_many_tasks_and_blocks_give_the_same_outputs(done, work, tmp_path, monkeypatch):
    monkeypatch.setattr(phases, "PAIRS_PER_TASK", 7)
    monkeypatch.setattr(phases, "BLOCK_PAIRS", 10)
    root = _copy(work, tmp_path)
    ctx = context(root)
    assert balance.run(ctx, balance.stage_key(ctx)) == done["balance"]
    for name in ("pairs", "clusters", *SCALES):
        assert pq.read_table(root / "balance" / f"{name}.parquet").equals(pq.read_table(work / "balance" / f"{name}.parquet"))
    assert not (root / "balance" / balance.STEPS).exists()


def test_balance_stage_outputs(done, work):
    counts = done["balance"]
    pairs = pq.read_table(work / "balance" / "pairs.parquet").to_pylist()
    reasons = Counter(p["reason"] for p in pairs)
    assert counts["pairs"]["read"] == len(pairs) == PARTS * PER_PART - 1  # the pair without texts is not read
    assert reasons["no_synthetic_text"] == reasons["no_embedding"] == 1
    assert {p["image_id"] for p in pairs if p["reason"] == "no_embedding"} == {NO_EMB}
    eligible = np.array([p["sim"] for p in pairs if p["reason"] not in ("no_synthetic_text", "no_embedding")])
    band = counts["band"]
    assert band["mode"] == "quantile" and (band["lower_quantile"], band["upper_quantile"]) == (0.10, 0.95)
    assert (band["min_sim"], band["max_sim"]) == pytest.approx(tuple(np.quantile(eligible, [0.10, 0.95])), abs=1e-5)
    in_band = {p["image_id"] for p in pairs if p["status"] == "kept"}
    assert all(band["min_sim"] - 1e-6 <= p["sim"] <= band["max_sim"] + 1e-6 for p in pairs if p["status"] == "kept")

    clusters = pq.read_table(work / "balance" / "clusters.parquet").to_pydict()
    assert set(clusters) == {"cluster", "size_before", *SCALES} and sum(clusters["size_before"]) == len(in_band)
    ids = {}
    for name, cap in SCALES.items():
        rows = pq.read_table(work / "balance" / f"{name}.parquet")
        assert {"image_id", "cluster", "sim"} <= set(rows.column_names)
        ids[name] = set(rows["image_id"].to_pylist())
        per_cluster = Counter(rows["cluster"].to_pylist())
        assert all(per_cluster[c] == min(cap, size) for c, size in zip(clusters["cluster"], clusters["size_before"]))
        assert clusters[name] == [per_cluster[c] for c in clusters["cluster"]]
        assert counts["scales"][name]["pairs"] == len(ids[name]) and ids[name] <= in_band
    assert ids["small"] < ids["mid"] < ids["big"]


def test_fixed_band_and_metaclip_on_the_stage(work, tmp_path):
    root = _copy(work, tmp_path)
    ctx = context(root, **{"balance.band": "fixed", "balance.min_sim": 0.25, "balance.max_sim": 0.35, "balance.method": "metaclip"})
    counts = balance.run(ctx, balance.stage_key(ctx))
    assert counts["band"] == {"mode": "fixed", "min_sim": 0.25, "max_sim": 0.35}
    sims = pq.read_table(root / "balance" / "big.parquet")["sim"].to_numpy()
    assert len(sims) and sims.min() >= 0.25 and sims.max() <= 0.35
    small, big = (set(pq.read_table(root / "balance" / f"{s}.parquet")["image_id"].to_pylist()) for s in ("small", "big"))
    assert small <= big and counts["method"] == "metaclip"


def test_dry_run_prints_the_size_of_each_cap(done, work):
    lines: list[str] = []
    sizes = balance.dry_run(context(work), caps=[1, 1000], echo=lines.append)
    assert {k: sizes[k] for k in SCALES} == {k: v["pairs"] for k, v in done["balance"]["scales"].items()}
    assert sizes["N=1"] == done["balance"]["clusters"] and sizes["N=1000"] == done["balance"]["pairs"]["kept"]
    assert len(lines) == 1 + len(SCALES) + 2 and all(f"{sizes[k]:,}" in "\n".join(lines) for k in SCALES)


def test_unsafe_scale_names_are_rejected():
    for name in ("../up", "a/b", "a.b", "", "pairs"):
        with pytest.raises(ConfigError):
            load_config(None, {"balance.scales": {name: 3}})


# --- export ----------------------------------------------------------------------------------

def _tars(work: Path, scale: str) -> list[str]:
    return [str(p) for p in sorted((work / "export" / scale).glob("*.tar"))]


def test_shards_read_with_webdataset(done, work):
    for scale in SCALES:
        folder = work / "export" / scale
        sizes = json.loads((folder / "sizes.json").read_text())
        assert list(sizes) == [Path(t).name for t in _tars(work, scale)]
        seen = 0
        for sample in wds.WebDataset(_tars(work, scale), shardshuffle=False).decode("pil"):
            image = next(sample[e] for e in ("jpg", "png", "webp") if e in sample)
            assert isinstance(image, Image.Image) and image.width > 0
            meta = sample["json"]
            assert all(isinstance(meta[t], str) and meta[t] for t in ("text1", "text2", "text3", "syn_text"))
            assert sample["txt"] == meta["text1"] and meta["key"] == sample["__key__"]
            assert {"image_id", "doc_id", "source", "sims", "cluster", "generated_caption", "figure_caption", "alt",
                    "tags"} <= meta.keys()
            seen += 1
        assert seen == sum(sizes.values()) == done["export"][scale]["kept"] == done["balance"]["scales"][scale]["pairs"] - done["export"][scale]["rejected"]


def test_tar_layout_keys_and_sizes(done, work):
    per = 8
    for scale in SCALES:
        sizes = json.loads((work / "export" / scale / "sizes.json").read_text())
        for shard, path in enumerate(_tars(work, scale)):
            raw = Path(path).read_bytes()
            assert raw[257:263] == b"ustar\x00"  # POSIX ustar headers
            with tarfile.open(path) as tar:
                members = tar.getmembers()
            assert all(m.isreg() and "/" not in m.name for m in members)
            keys = [m.name.split(".", 1)[0] for m in members]
            runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
            assert len(runs) == len(set(runs)) == sizes[Path(path).name]  # one contiguous run per sample
            assert all("." not in k and k.isdigit() for k in runs)
            stats = json.loads((work / "export" / scale / f"{shard:05d}_stats.json").read_text())
            meta = pq.read_table(work / "export" / scale / f"{shard:05d}.parquet").to_pylist()
            assert len(meta) == stats["count"] and stats["successes"] == len(runs)
            assert [m["key"] for m in meta] == [sample_key(shard, i, per) for i in range(len(meta))]
            assert {m["key"] for m in meta if m["status"] == "success"} == set(runs)


def test_openclip_style_loader_reads_every_sample(done, work):
    def has_caption_and_image(sample: dict) -> bool:  # OpenCLIP's filter_no_caption_or_no_image
        return "txt" in sample and any(e in sample for e in ("png", "jpg", "jpeg", "webp"))

    for scale in SCALES:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(_tars(work, scale)), wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.reraise_exception), wds.select(has_caption_and_image),
            wds.decode("pilrgb", handler=wds.reraise_exception), wds.to_tuple("jpg;png;jpeg;webp", "txt"))
        pairs = list(pipeline)
        assert len(pairs) == done["export"][scale]["kept"]
        assert all(img.mode == "RGB" and isinstance(text, str) and text for img, text in pairs)


def test_released_parquet(done, work):
    for scale in SCALES:
        t = pq.read_table(work / "export" / scale / f"realsyn-{scale}.parquet")
        assert t.column_names == ["raw_image_url", "text1", "text2", "text3", "syn_text", "image_id", "doc_id"]
        assert t.num_rows == done["export"][scale]["kept"] and all(str(u).startswith("https://") for u in t["raw_image_url"].to_pylist())


def test_hf_datasets_and_webdataset_read_every_row(done, work):
    """The real HF `datasets` WebDataset loader and `webdataset` read the same rows from every
    scale, one image column (`jpg`) in every row (mixed formats would lose rows in `datasets`)."""
    import webdataset
    from datasets import load_dataset

    for scale, sizes in ((s, json.loads((work / "export" / s / "sizes.json").read_text())) for s in done["export"]):
        ds = load_dataset("webdataset", data_files={"train": _tars(work, scale)}, split="train")
        assert ds.num_rows == sum(sizes.values()) == sum(1 for _ in webdataset.WebDataset(_tars(work, scale), shardshuffle=False))
        assert "jpg" in ds.column_names and "png" not in ds.column_names
        assert all(row["jpg"] is not None and row["json"]["text1"] for row in ds)


def test_rerunning_export_does_no_work(done, work):
    ctx = done["ctx"]
    before = {p: p.stat().st_mtime_ns for p in (work / "export").rglob("*")}
    assert export.run(ctx, export.stage_key(ctx)) == done["export"]
    assert {p: p.stat().st_mtime_ns for p in (work / "export").rglob("*")} == before


def test_export_failures_formats_and_resize(work, tmp_path):
    root = _copy(work, tmp_path)
    ctx = context(root, **{"balance.band": "off", "balance.scales": {"all": 1000}})
    balance.run(ctx, balance.stage_key(ctx))
    counts = export.run(ctx, export.stage_key(ctx))["all"]
    assert counts["reasons"] == {"failed_to_download": 1, "failed_to_resize": 1}  # NO_BLOB, BAD_BYTES
    meta = [r for p in sorted((root / "export" / "all").glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    status = {m["image_id"]: m["status"] for m in meta}
    assert status[NO_BLOB] == "failed_to_download" and status[BAD_BYTES] == "failed_to_resize"
    formats = Counter(m["format"] for m in meta if m["status"] == "success")
    assert set(formats) == {"jpg"}  # export.image_format: jpg (the default): one image column for every loader
    keep = context(root, **{"balance.band": "off", "balance.scales": {"all": 1000}, "export.image_format": "keep"})
    export.run(keep, export.stage_key(keep))
    meta = [r for p in sorted((root / "export" / "all").glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    formats = Counter(m["format"] for m in meta if m["status"] == "success")
    assert set(formats) == {"jpg", "png", "webp"}  # keep: originals; GIFs re-encoded: OpenCLIP reads no gif

    crop = context(root, **{"balance.band": "off", "balance.scales": {"all": 1000}, "export.resize_mode": "center_crop",
                            "export.image_size": 64})
    export.run(crop, export.stage_key(crop))
    samples = list(wds.WebDataset(_tars(root, "all"), shardshuffle=False).decode("pil"))
    assert len(samples) == counts["kept"] and all("jpg" in s and s["jpg"].size == (64, 64) for s in samples)


@pytest.mark.parametrize("mode,expected", [("keep_ratio", (96, 64)), ("center_crop", (64, 64)), ("border", (64, 64)), ("no", (300, 200))])
def test_resize_modes(mode, expected):
    from realsyn.config import ExportConfig
    from realsyn.export.shards import encode_image

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buf, "PNG")
    out = encode_image(buf.getvalue(), ExportConfig(resize_mode=mode, image_size=64, image_format="keep"))
    assert (out.width, out.height) == expected == Image.open(io.BytesIO(out.data)).size
    assert out.ext == ("png" if mode == "no" else "jpg") and (out.data == buf.getvalue()) == (mode == "no")
    small = encode_image(buf.getvalue(), ExportConfig(resize_mode=mode, image_size=1000, image_format="keep"))
    assert small.data == buf.getvalue()  # resize_only_if_bigger: left as it is


def test_tar_writer_refuses_unsafe_names(tmp_path):
    from realsyn.export.shards import write_tar

    for name in ("../x.jpg", "a/b.jpg", "/abs.jpg", "noext", "k.../x"):
        with pytest.raises(ValueError):
            write_tar(tmp_path / "x.tar", [[(name, b"1")]])
    assert not list(tmp_path.iterdir())


# --- report ----------------------------------------------------------------------------------

SECTIONS = ("scales", "funnel", "similarity", "tokens", "entities", "topics", "clusters", "retrieval", "gallery")


def test_assessments_on_texts():
    from realsyn.report import assess

    assert assess.entities("Ray Charles played in Seattle. Paris is nice. Greg Huckins - Flute") == {"ray charles", "seattle", "greg huckins", "flute"}
    assert assess.entities("a cat on a sofa") == set() and assess.token_counts(["a red bus, waits.", ""]).tolist() == [6, 0]
    e = assess.entity_overlap(["I met Ray Charles in Seattle."], ["Then Ray Charles went to New York."])
    assert (e["a_only"], e["shared"], e["b_only"]) == (1, 1, 1)
    topics = assess.lda_topics({"R1": list(WORDS) * 3, "S1": [w.upper() for w in WORDS]}, 2, 4, 0)
    assert len(topics.words) == 2 and all(len(w) == 4 for w in topics.words)
    assert all(v.sum() == pytest.approx(1) for v in topics.shares.values())
    summary = {"read": 3, "kept": 2, "rejected": 1, "reasons": {"x": 1}}
    rows = assess.funnel({"zzz": {"counts": {"a": summary}}, "export": {"counts": {"s": summary}}, "extract": {"counts": {"images": summary}}})
    assert [(r.stage, r.item) for r in rows] == [("extract", "images"), ("export", "s"), ("zzz", "a")]


def test_report_is_self_contained_and_escaped(done, work):
    text = (work / "report" / "index.html").read_text()
    for ident in SECTIONS:
        assert f'<section id="{ident}">' in text
    assert "<script" not in text.lower() and "&lt;script&gt;" in text
    assert text.count('src="data:image/png;base64,') >= 6 and text.count('src="data:image/jpeg;base64,') == 6
    assert "http://" not in text.replace("https://example.org", "") and "<link" not in text
    assert all(reason in text for reason in ("too_small", "no_synthetic_text", "below_band"))  # the funnel's reasons


def test_report_renders_in_headless_chromium(done, work, tmp_path):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:  # .ci/run installs it: a CI run must take the screenshot
        if os.environ.get("CI"):
            pytest.fail("chromium not installed in CI (.ci/run should apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    shot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,2400", f"--screenshot={shot}", (work / "report" / "index.html").resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape[0] >= 1000 and pixels.std() > 10 and len(np.unique(pixels)) > 50


def test_balance_with_the_hierarchical_index(work, tmp_path):
    """Images clustered by two-level k-means (the paper's 1M clusters need it): every pair gets a
    cluster of the fine level, and a re-run gives the same draw."""
    root = _copy(work, tmp_path)
    ctx = context(root, **{"balance.index": "hierarchical", "balance.clusters": 9, "balance.band": "off"})
    counts = balance.run(ctx, balance.stage_key(ctx))
    pairs = pq.read_table(root / "balance" / "pairs.parquet").to_pylist()
    clusters = {p["cluster"] for p in pairs if p["cluster"] is not None and p["cluster"] >= 0}
    assert 1 < counts["clusters"] <= 12 and clusters <= set(range(counts["clusters"])) and len(clusters) > 1
    first = {p.name: p.read_bytes() for p in (root / "balance").glob("*.parquet")}
    balance.run(ctx, "another-key")
    assert {p.name: p.read_bytes() for p in (root / "balance").glob("*.parquet")} == first


def test_histograms_of_nothing_with_given_bins():
    """An empty export (e.g. a WARC whose pages yield no image-text pair) still draws its report."""
    import numpy as np

    from realsyn.report import plots

    fig = plots.histograms({"R1": np.zeros(0)}, "tokens per text", np.arange(0, 5) - 0.5)
    assert fig.axes[0].get_xlabel() == "tokens per text"
    assert plots.histograms({}, "x", 10).axes
