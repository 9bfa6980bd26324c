"""Hierarchical retrieval: search properties on the shared synthetic embeddings, and the stage
on a hand-built workspace (extract + embed tables with their column contracts)."""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realsyn.centroids import TopK, train_kmeans
from realsyn.config import load_config
from realsyn.embed import stage as embed
from realsyn.extract import stage as extract
from realsyn.retrieve import stage as retrieve
from realsyn.retrieve.search import ClusterIndex, document_topk, drop_below, exact_topk, hybrid_merge, recall_at_k
from realsyn.retrieve.uses import accept, move_to_front, text_keys
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace, part_name, write_table
from realsyn.tables import embedding_table

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
if not (BENCH / "embeddings.py").exists():
    pytest.skip(f"shared synthetic embeddings not found at {BENCH}", allow_module_level=True)
sys.path.insert(0, str(BENCH))
from embeddings import make  # noqa: E402

K = 3


@pytest.fixture(scope="module")
def data():
    sentences, images = make(6000, 400, dim=64, topics=40, subtopics=5)
    cent = train_kmeans(sentences, 30, niter=10, seed=0)
    return sentences, images, ClusterIndex.build(sentences, cent)


def test_hits_are_k_best_first_and_true_cosines(data):
    s, q, index = data
    hits, cluster = index.search(q, K, nprobe=2)
    assert hits.idx.shape == hits.sims.shape == (len(q), K) and (hits.idx >= 0).all()
    assert (np.diff(hits.sims, axis=1) <= 0).all()
    np.testing.assert_allclose(hits.sims, np.einsum("md,mkd->mk", q, s[hits.idx]), atol=1e-5)
    assert cluster.shape == (len(q),) and cluster.min() >= 0 and cluster.max() < len(index.centroids)


def test_recall_against_exact(data):
    s, q, index = data
    exact = exact_topk(q, s, K)
    assert (np.diff(exact.sims, axis=1) <= 0).all()
    everything = index.search(q, K, nprobe=len(index.centroids))[0]
    assert recall_at_k(everything.idx, exact.idx) == 1.0
    np.testing.assert_allclose(everything.sims, exact.sims, atol=1e-5)
    assert recall_at_k(index.search(q, K, nprobe=8)[0].idx, exact.idx) >= 0.95
    assert 0.5 < recall_at_k(index.search(q, K, nprobe=1)[0].idx, exact.idx) <= 1.0
    # chunked exact search (blocks of base rows) is the same search
    assert (exact_topk(q, s, K, block=1000).idx == exact.idx).all()


def test_determinism(data):
    s, q, index = data
    again = ClusterIndex.build(s, train_kmeans(s, 30, niter=10, seed=0))
    assert np.array_equal(again.centroids, index.centroids) and np.array_equal(again.order, index.order)
    a, b = index.search(q, K, 2)[0], again.search(q, K, 2, threads=1)[0]
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.sims, b.sims)
    assert not np.array_equal(train_kmeans(s, 30, niter=10, seed=1), index.centroids)


def _docs(s, q):
    rng = np.random.default_rng(1)
    return rng.integers(0, 50, len(s)), rng.integers(0, 60, len(q))  # docs 50..59 have no sentences


def test_document_scope(data):
    s, q, _ = data
    s_doc, q_doc = _docs(s, q)
    hits = document_topk(q, q_doc, s, s_doc, K)
    for i in range(len(q)):
        members = np.flatnonzero(s_doc == q_doc[i])
        if len(members) == 0:
            assert (hits.idx[i] == -1).all()
            continue
        sims = s[members] @ q[i]
        best = members[np.argsort(-sims)[:K]]
        assert set(hits.idx[i][hits.idx[i] >= 0]) == set(best)


def test_near_bonus_ranks_adjacent_text_first(data):
    """With positions, a same-document sentence next to the image outranks more similar ones
    further away by at most the bonus; returned sims stay raw cosines."""
    s, q, _ = data
    s_doc, q_doc = _docs(s, q)
    rng = np.random.default_rng(2)
    s_pos, q_pos = rng.permutation(len(s)), rng.integers(0, len(s), len(q))  # distinct positions
    hits = document_topk(q, q_doc, s, s_doc, K, q_pos=q_pos, base_pos=s_pos, near_bonus=0.3)
    for i in np.flatnonzero((hits.idx >= 0).all(axis=1))[:50]:
        members = np.flatnonzero(s_doc == q_doc[i])
        score = s[members] @ q[i] + 0.3 / np.maximum(np.abs(s_pos[members] - q_pos[i]), 1)
        assert list(hits.idx[i]) == list(members[np.argsort(-score, kind="stable")[:K]])
        np.testing.assert_allclose(hits.sims[i], s[hits.idx[i]] @ q[i], atol=1e-5)
    assert (document_topk(q, q_doc, s, s_doc, K, q_pos=q_pos, base_pos=s_pos).idx
            == document_topk(q, q_doc, s, s_doc, K).idx).all()  # no bonus: plain cosine order


def test_hybrid_scope(data):
    s, q, index = data
    s_doc, q_doc = _docs(s, q)
    glob = index.search(q, K, nprobe=2)[0]
    doc = document_topk(q, q_doc, s, s_doc, K)
    same = (s_doc[glob.idx] == q_doc[:, None]) & (glob.idx >= 0)
    def merged(bonus: float) -> TopK:
        return hybrid_merge(glob, same * np.float32(bonus), doc, (doc.idx >= 0) * np.float32(bonus), K)

    plain = merged(0.0)
    for i in range(len(q)):
        cand = {**dict(zip(glob.idx[i], glob.sims[i])), **dict(zip(doc.idx[i], doc.sims[i]))}
        cand.pop(-1, None)
        best = sorted(cand.values(), reverse=True)[:K]
        np.testing.assert_allclose(plain.sims[i], best, atol=1e-5)
        assert len(set(plain.idx[i])) == K  # a text in both lists counts once
    boosted = merged(10.0)
    has_doc = (doc.idx >= 0).sum(axis=1)
    for i in range(len(q)):
        own = s_doc[boosted.idx[i]] == q_doc[i]
        assert own[:min(K, has_doc[i])].all()  # same-document texts come first
    # a small bonus only promotes same-document texts close to the global ones
    small = merged(0.02)
    assert (small.sims[:, 0] >= glob.sims[:, 0] - 0.02 - 1e-6).all()


def test_min_sim_drops():
    hits = TopK(np.array([[5, 2, 9], [1, -1, -1], [3, 4, 7]]),
                np.array([[0.9, 0.5, 0.2], [0.6, -np.inf, -np.inf], [0.3, 0.8, 0.1]], np.float32))
    out = drop_below(hits, 0.4)
    assert out.idx.tolist() == [[5, 2, -1], [1, -1, -1], [4, -1, -1]]
    assert out.sims[0, :2].tolist() == pytest.approx([0.9, 0.5]) and np.isneginf(out.sims[2, 1:]).all()
    assert drop_below(hits, None) is hits


# --- the stage, on a hand-built workspace -------------------------------------------------

PARTS, DOCS_PER_PART, SENTS_PER_DOC, IMAGES_PER_DOC = 3, 4, 60, 5


def _fake_workspace(root: Path, **overrides) -> Context:
    """extract + embed outputs with the promised columns; some rows rejected in each stage."""
    n_docs = PARTS * DOCS_PER_PART
    s_emb, i_emb = make(n_docs * SENTS_PER_DOC, n_docs * IMAGES_PER_DOC, dim=32, topics=20, subtopics=4)
    ctx = Context(Workspace(root), load_config(None, overrides), LocalExecutor(1))
    ctx.ws.begin(extract.NAME, extract.stage_key(ctx))  # begin() clears a stage's folder: first
    ctx.ws.begin(embed.NAME, embed.stage_key(ctx))
    dedup: dict[str, list] = {"images": [], "sentences": []}
    for p in range(PARTS):
        docs = [f"doc{p}-{d}" for d in range(DOCS_PER_PART)]
        for kind, id_col, per_doc, emb in (("sentences", "sentence_id", SENTS_PER_DOC, s_emb),
                                           ("images", "image_id", IMAGES_PER_DOC, i_emb)):
            n = DOCS_PER_PART * per_doc
            ids = [f"{kind[0]}{p}-{j}" for j in range(n)]
            status = ["rejected" if j % 11 == 3 else "kept" for j in range(n)]  # rejected by extract
            cols = {id_col: ids, "doc_id": [docs[j // per_doc] for j in range(n)], "status": status,
                    "position": pa.array([2 * (j % per_doc) + (kind == "images") for j in range(n)], pa.int32())}
            if kind == "sentences":
                cols["text"] = [f"text of {i}" for i in ids]
            write_table(pa.table(cols), root / extract.NAME / kind / part_name(p))
            kept = [j for j in range(n) if status[j] == "kept"]
            rows = emb[p * n:(p + 1) * n][kept]
            write_table(embedding_table([ids[j] for j in kept], rows, id_col, "float16"),
                        root / embed.NAME / kind / part_name(p))
            dedup[kind] += [(ids[j], j % 7 == 5) for j in kept]  # rejected by semantic dedup
    ctx.ws.note(extract.NAME, parts=PARTS)
    ctx.ws.finish(extract.NAME, {"parts": PARTS}, 0)
    for kind, id_col in embed.KINDS.items():
        ids, dup = zip(*dedup[kind])
        write_table(pa.table({id_col: list(ids), "status": ["rejected" if d else "kept" for d in dup],
                              "reason": ["semantic_duplicate" if d else None for d in dup],
                              "dup_of": [ids[0] if d else None for d in dup]}),
                    root / embed.NAME / f"dedup_{kind}.parquet")
    ctx.ws.finish(embed.NAME, {}, 0)
    return ctx


def _run(ctx: Context) -> dict:
    key = retrieve.stage_key(ctx)
    with ctx.executor:
        counts = retrieve.run(ctx, key)
    assert ctx.ws.is_current(retrieve.NAME, key)
    return counts


def _pairs(root: Path) -> pa.Table:
    return pq.read_table(sorted((root / retrieve.NAME / "pairs").glob("part-*.parquet")))


def test_stage_writes_pairs_and_resumes(tmp_path):
    ctx = _fake_workspace(tmp_path, **{"retrieve.images_per_task": 80, "retrieve.sentences_per_cluster": 50,
                                       "retrieve.scope": "global", "retrieve.max_uses": 0})
    counts = _run(ctx)
    t = _pairs(tmp_path)
    assert {"image_id", "doc_id", "text_ids", "texts", "sims", "cluster", "same_doc", "status"} <= set(t.column_names)
    assert t.schema.field("text_ids").type == pa.list_(pa.string()) and t.schema.field("sims").type == pa.list_(pa.float32())
    assert t.schema.field("cluster").type == pa.int32()
    assert counts["images"]["read"] == t.num_rows == counts["images"]["kept"] + counts["images"]["rejected"]
    kept_images = pq.read_table(tmp_path / embed.NAME / "dedup_images.parquet").to_pydict()
    assert set(t["image_id"].to_pylist()) == {i for i, s in zip(kept_images["image_id"], kept_images["status"]) if s == "kept"}
    dedup_s = pq.read_table(tmp_path / embed.NAME / "dedup_sentences.parquet").to_pydict()
    kept_sentences = {i for i, s in zip(dedup_s["sentence_id"], dedup_s["status"]) if s == "kept"}
    for row in t.to_pylist():
        assert len(row["text_ids"]) == len(row["texts"]) == len(row["sims"]) == K
        assert row["sims"] == sorted(row["sims"], reverse=True)
        assert set(row["text_ids"]) <= kept_sentences
        assert row["texts"] == [f"text of {i}" for i in row["text_ids"]]
    assert counts["clusters"] == round(counts["sentences"] / 50)
    assert 0 < counts["top1_sim"]["p10"] <= counts["top1_sim"]["p50"] <= counts["top1_sim"]["p90"]
    assert 0.5 < counts["recall_at_k"] <= 1.0 and counts["recall_images"] == min(1000, t.num_rows)

    # a run killed after k-means, while sorting a block, with one part missing: k-means is not
    # redone, the missing block and part are, output identical
    out = tmp_path / retrieve.NAME
    first = {p.name: p.read_bytes() for p in (out / "pairs").glob("*.parquet")}
    centroids = (out / "centroids.npy").stat().st_mtime_ns
    assert not (out / "assign").exists() and not (out / "join").exists() and not (out / "queries").exists()
    (out / "pairs" / part_name(1)).unlink()
    (out / "blocks" / "b-00000.offsets.npy").unlink()
    manifest = json.loads(ctx.ws.manifest_path.read_text())
    del manifest["stages"][retrieve.NAME]["index_built"]
    manifest["stages"][retrieve.NAME]["status"] = "running"
    ctx.ws.manifest_path.write_text(json.dumps(manifest))
    ctx.executor = LocalExecutor(2)  # and worker processes give the same bytes
    assert _run(ctx) == counts
    assert {p.name: p.read_bytes() for p in (out / "pairs").glob("*.parquet")} == first
    assert (out / "centroids.npy").stat().st_mtime_ns == centroids


@pytest.mark.parametrize("scope", ["document", "hybrid"])
def test_stage_scopes_and_min_sim(tmp_path, scope):
    ctx = _fake_workspace(tmp_path, **{"retrieve.scope": scope, "retrieve.doc_bonus": 100.0, "retrieve.min_sim": 0.4,
                                       "retrieve.sentences_per_cluster": 50, "retrieve.nprobe": 1})
    counts = _run(ctx)
    t = _pairs(tmp_path)
    assert 0 < counts["images"]["kept"] < counts["images"]["read"]  # min_sim left some images without text
    for row in t.to_pylist():
        assert all(s >= 0.4 for s in row["sims"]) and len(row["sims"]) <= K
        assert (row["status"] == "kept") == bool(row["text_ids"])
        if scope == "document":
            assert all(row["same_doc"]) and all(i.split("-")[0][1:] == row["image_id"].split("-")[0][1:] for i in row["text_ids"])
        else:  # a bonus of 100 spreads ranks the image's own document first
            assert row["same_doc"] == sorted(row["same_doc"], reverse=True)
    assert counts["same_doc_fraction"] == 1.0 if scope == "document" else 0 < counts["same_doc_fraction"] < 1


# --- retrieve.max_uses --------------------------------------------------------------------


def test_accept_keeps_the_best_proposals_of_each_text():
    keys = np.array([7, 7, 9, 7, 9], np.uint64)
    sims = np.array([0.5, 0.9, 0.1, 0.5, 0.2], np.float32)
    ok = accept(keys, sims, np.array([2, 2, 0, 2, 0]))
    assert ok.tolist() == [True, True, False, False, False]  # 0.9, then the earlier of two 0.5


def test_max_uses_caps_r1_and_keeps_every_text(tmp_path):
    ctx = _fake_workspace(tmp_path, **{"retrieve.scope": "global", "retrieve.max_uses": 0,
                                       "retrieve.sentences_per_cluster": 50})
    _run(ctx)
    free = _pairs(tmp_path)
    r1 = Counter(ids[0] for ids in free["text_ids"].to_pylist() if ids)
    assert max(r1.values()) > 1  # some sentence is the best of two images: something to cap

    for cap, tmp in ((1, tmp_path / "a"), (1, tmp_path / "b")):
        ctx = _fake_workspace(tmp, **{"retrieve.scope": "global", "retrieve.max_uses": cap,
                                      "retrieve.sentences_per_cluster": 50, "retrieve.images_per_task": 80})
        counts = _run(ctx)
        capped = _pairs(tmp)
        uses = Counter(ids[0] for ids in capped["text_ids"].to_pylist() if ids)
        assert sum(n > cap for n in uses.values()) <= counts["max_uses_fallback"]
        assert counts["max_uses_moved"] > 0
        for a, b in zip(free.to_pylist(), capped.to_pylist()):  # same texts, a new R1 first, others in order
            assert sorted(a["text_ids"]) == sorted(b["text_ids"]) and dict(zip(a["text_ids"], a["sims"])) == dict(zip(b["text_ids"], b["sims"]))
            rest = [t for t in a["text_ids"] if t != b["text_ids"][0]] if b["text_ids"] else []
            assert b["text_ids"][1:] == rest
        # round 0: of the images whose best text is t, those that keep it are the closest to it
        for text in r1:
            rows = [(a["sims"][0], b["text_ids"][0] == text) for a, b in zip(free.to_pylist(), capped.to_pylist())
                    if a["text_ids"] and a["text_ids"][0] == text]
            kept, refused = [s for s, k in rows if k], [s for s, k in rows if not k]
            if refused:
                assert len(kept) <= cap and min(kept, default=1) >= max(refused)
    a, b = ((tmp_path / x / retrieve.NAME / "pairs") for x in "ab")
    assert [p.read_bytes() for p in sorted(a.glob("*"))] == [p.read_bytes() for p in sorted(b.glob("*"))]


def test_move_to_front_is_idempotent():
    t = pa.table({"text_ids": [["a", "b", "c"], ["d"]], "texts": [["A", "B", "C"], ["D"]],
                  "sims": pa.array([[0.3, 0.2, 0.1], [0.5]], pa.list_(pa.float32())),
                  "same_doc": [[True, False, False], [True]]})
    chosen = np.r_[text_keys(["c"]), np.uint64(0)]
    once = move_to_front(t, chosen)
    assert once["text_ids"].to_pylist() == [["c", "a", "b"], ["d"]] and once["texts"].to_pylist()[0] == ["C", "A", "B"]
    assert once["sims"].to_pylist()[0] == pytest.approx([0.1, 0.3, 0.2])
    assert move_to_front(once, chosen).equals(once)


def test_apply_scope_is_the_whole_policy():
    """global: the pool's list; document: the own document's; hybrid: both, same-document texts
    ranked up by the bonus; min_sim drops weak texts of each list first."""
    from realsyn.retrieve.search import Scope, apply_scope

    glob = TopK(np.array([[10, 11, 12]]), np.array([[0.9, 0.5, 0.1]], np.float32))
    doc = TopK(np.array([[20, 21, -1]]), np.array([[0.4, 0.3, -np.inf]], np.float32))

    def context(h: TopK) -> tuple[np.ndarray, np.ndarray]:
        same = h.idx >= 20  # rows 20+ are the image's own document, at distance 1
        return same, np.ones(h.idx.shape, np.int64)

    assert apply_scope(glob, doc, Scope("global", 3, 0.2), context).idx.tolist() == [[10, 11, -1]]
    assert apply_scope(glob, doc, Scope("document", 3), context).idx.tolist() == [[20, 21, -1]]
    merged = apply_scope(glob, doc, Scope("hybrid", 3, None, doc_bonus=0.0, near_bonus=0.6), context)
    assert merged.idx.tolist() == [[20, 21, 10]] and merged.sims.tolist()[0] == pytest.approx([0.4, 0.3, 0.9])


def test_two_level_kmeans_and_the_hnsw_router(data):
    """Two-level k-means groups clusters by cell and is seeded; the HNSW router finds the flat
    scan's nearest centroids (its recall is measured, not assumed)."""
    from realsyn.centroids import CentroidIndex, centroid_recall, hnsw_router, nearest_centroids

    s, q, _ = data
    h = CentroidIndex.train(s, 100, mode="hierarchical", seed=0)
    assert len(h.cells) == 11 and abs(len(h.centroids) - 100) <= 10 and h.cells[-1] == len(h.centroids)
    assert (np.diff(h.cells) >= 0).all() and h.router is None  # a scan below 65,536 clusters
    assert (CentroidIndex.train(s, 100, mode="hierarchical", seed=0).centroids == h.centroids).all()  # seeded
    assert centroid_recall(q, h) is None
    routed = CentroidIndex.of(h.centroids, h.cells, ef=256, router=hnsw_router(h.centroids))
    flat = nearest_centroids(q, h.centroids, 3)
    assert (routed.nearest(q, 3).idx[:, 0] == flat.idx[:, 0]).mean() > 0.98
    assert 0.98 < centroid_recall(q, routed) <= 1.0
    assert (CentroidIndex.train(s, 20, mode="auto").cells == [0, 20]).all()  # auto: flat k-means, one cell


def test_nearest_centroids_through_cells(data, monkeypatch, tmp_path):
    """Past CELL_ROUTE_MIN clusters the index routes through cells of about CLUSTERS_PER_CELL
    clusters; it finds the scan's nearest centroid for most rows, more with more cells probed,
    and survives saving."""
    import realsyn.centroids
    from realsyn.buckets import open_index, save_index
    from realsyn.centroids import CentroidIndex, centroid_recall, nearest_centroids

    monkeypatch.setattr(realsyn.centroids, "CELL_ROUTE_MIN", 32)
    monkeypatch.setattr(realsyn.centroids, "CLUSTERS_PER_CELL", 5)
    s, q, _ = data
    h = CentroidIndex.train(s, 100, mode="hierarchical", seed=0)
    assert h.coarse is not None and len(h.coarse) == len(h.cells) - 1 and (np.diff(h.cells) > 0).all()
    top = h.nearest(q, 3)
    assert (np.sort(top.idx, axis=1)[:, 1:] != np.sort(top.idx, axis=1)[:, :-1]).all() and (top.idx >= 0).all()
    assert (np.diff(top.sims, axis=1) <= 0).all()
    scan = nearest_centroids(q, h.centroids, 1).idx[:, 0]
    one, more = centroid_recall(q, h), centroid_recall(q, CentroidIndex.of(h.centroids, h.cells, coarse=h.coarse, probe=4))
    assert 0.8 < one <= more <= 1.0 and one == (h.nearest(q, 1).idx[:, 0] == scan).mean()
    assert one <= (top.idx[:, 0] == scan).mean()  # k = 3 searches 3 cells
    save_index(h, tmp_path)
    assert (open_index(tmp_path).nearest(q, 3).idx == top.idx).all()


def test_stage_with_the_hierarchical_index(tmp_path, monkeypatch):
    ctx = _fake_workspace(tmp_path, **{"retrieve.index": "hierarchical", "retrieve.sentences_per_cluster": 20,
                                       "retrieve.block_sentences": 200, "retrieve.sentences_per_task": 300,
                                       "retrieve.scope": "global", "retrieve.max_uses": 0})
    import realsyn.centroids

    monkeypatch.setattr(realsyn.centroids, "FLAT_ROUTE_MAX", 8)  # the HNSW router at this small size
    monkeypatch.setattr(realsyn.centroids, "FLAT_TRAIN_MAX", 8)
    counts = _run(ctx)
    out = tmp_path / retrieve.NAME
    assert (out / "router.npy").exists() and counts["clusters"] == len(np.load(out / "centroids.npy"))
    assert len(np.load(out / "cells.npy")) > 2 and counts["blocks"] == len(list((out / "blocks").glob("*.offsets.npy"))) > 1
    assert 0.9 < counts["centroid_recall"] <= 1.0 and 0.3 < counts["recall_at_k"] <= 1.0
    assert counts["images"]["kept"] == counts["images"]["read"] > 0


def test_automatic_nprobe(tmp_path):
    """nprobe auto: the smallest nprobe whose recall (computed from the exact hits' clusters
    and the probes) reaches the target; the search then measures exactly that recall."""
    ctx = _fake_workspace(tmp_path, **{"retrieve.sentences_per_cluster": 10, "retrieve.scope": "global",
                                       "retrieve.max_uses": 0, "retrieve.target_recall": 0.8, "retrieve.max_nprobe": 8})
    counts = _run(ctx)
    curve, chosen = counts["recall_by_nprobe"], counts["nprobe"]
    assert len(curve) == chosen and curve == sorted(curve) and counts["nprobe_target_met"]
    assert curve[-1] >= 0.8 and (chosen == 1 or curve[-2] < 0.8)
    assert counts["recall_at_k"] == curve[-1]  # the search finds what the probes predict
    assert chosen > 1  # this data needs more than one cluster for 0.8


def test_top_cols_by_argmax_equals_a_full_sort():
    """The repeated-argmax route of `top_cols` (k <= ARGMAX_K) and the partition route give each
    row's k best columns best first, equal values in column order, as a stable full sort does."""
    from realsyn.centroids import ARGMAX_K, top_cols

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((300, 500)).astype(np.float32)
    scores[:50, 10:20] = 7.0  # ties at the top
    scores[50:60] = np.round(scores[50:60])  # ties everywhere
    for k in (1, 2, 3, ARGMAX_K, ARGMAX_K + 1, 40):
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        cols, vals = top_cols(scores, k)
        assert np.array_equal(vals, np.take_along_axis(scores, want, axis=1)), k
        if k <= ARGMAX_K:
            assert np.array_equal(cols, want), k
