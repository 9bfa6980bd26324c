import numpy as np
from dedup_reference import near_duplicate_pairs, near_duplicates

from realsyn.dedup import first_occurrence


def test_first_occurrence_keeps_the_earliest_candidate():
    keys = np.array([5, 7, 5, 7, 5], dtype=np.int64)
    cand = np.array([False, True, True, True, True])
    assert first_occurrence(keys, cand).tolist() == [-1, 1, 2, 1, 2]


def test_near_duplicates_are_exact_within_distance():
    rng = np.random.default_rng(0)
    h = rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64)
    h[10] = h[3] ^ np.int64(0b1111)  # 4 bits from item 3
    h[11] = h[10] ^ np.int64(1 << 40)  # 1 bit from 10: chained into the same group
    h[12] = h[4] ^ np.int64(0b11111)  # 5 bits: not a duplicate at distance 4
    a, b = near_duplicate_pairs(h, 4)
    assert {(int(x), int(y)) for x, y in zip(a, b)} >= {(3, 10), (10, 11)}
    g = near_duplicates(h, np.ones(len(h), bool), 4)
    assert g[10] == 3 and g[11] == 3 and g[12] == 12 and g[4] == 4


def test_near_duplicate_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    base = rng.integers(-(2**63), 2**63 - 1, size=50, dtype=np.int64)
    flips = rng.integers(0, 64, size=(300, 5))
    def flip(i: int) -> int:
        v = int(base[i % 50]) & (2**64 - 1)
        for f in flips[i][: i % 6]:
            v ^= 1 << int(f)
        return v

    h = np.array([flip(i) for i in range(300)], dtype=np.uint64).view(np.int64)
    u = h.view(np.uint64)
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300) if bin(int(u[i] ^ u[j])).count("1") <= 3}
    a, b = near_duplicate_pairs(h, 3)
    assert {(int(x), int(y)) for x, y in zip(a, b)} == brute


def test_bridge_image_dedup_false_duplicates_on_distinct_photos(data_dir, report):
    """Distinct real photos of one class (CIFAR-10 test folders): under the `bridge` model their
    vectors are ImageNet-class probabilities, so at the calibrated threshold (the default, `auto`)
    cosine pairs many different photos; the pHash gate (on by default for the bridge) keeps such
    pairs apart."""
    from realsyn.dedup import semantic_duplicates
    from realsyn.embed.calibrate import copy_cosines, pair_cosines, threshold
    from realsyn.extract.images import inspect_image
    from realsyn.models import load

    model = load("joint", "bridge", "cpu")
    classes = {cls: [f.read_bytes() for f in sorted((data_dir / "cifar10" / "test" / cls).glob("*.jpg"))]
               for cls in ("ship", "automobile", "airplane", "horse")}
    rng = np.random.default_rng(0)  # as the stage: a seeded sample of 256 images
    pool = [d for data in classes.values() for d in data]
    copies, emb = copy_cosines([pool[i] for i in rng.choice(len(pool), 256, replace=False)], model.embed_images)
    cut = threshold(copies, pair_cosines(emb), 0.05, 0.99)
    assert 0.9 < cut < 1
    rates = {}
    for cls, data in classes.items():
        emb = model.embed_images(data)
        phash = np.array([inspect_image(d, min_side=1, min_aspect=0.01, max_aspect=100).phash for d in data], np.int64)
        plain = semantic_duplicates(emb, cut)
        gated = semantic_duplicates(emb, cut, phash=phash, max_phash=16)
        rates[cls] = (int((plain != np.arange(len(data))).sum()), int((gated != np.arange(len(data))).sum()), len(data))
    report(f"bridge image dedup at the calibrated {cut:.4f} on distinct CIFAR-10 photos (removed without / with "
           "pHash gate, of n): " + ", ".join(f"{c} {a}/{b} of {n}" for c, (a, b, n) in rates.items()))
    removed_plain = sum(a for a, _, _ in rates.values())
    removed_gated = sum(b for _, b, _ in rates.values())
    total = sum(n for _, _, n in rates.values())
    assert removed_gated / total <= 0.01 and removed_gated < removed_plain


def test_calibrated_threshold_bounds_distinct_pairs(data_dir, report):
    """The calibration on real images: re-encoded copies mostly sit above the threshold where the
    encoder can tell them apart (CIFAR photos), and distinct images sit below it in ~99% of pairs
    also where it cannot (the engravings of a Gutenberg book, which the `bridge` maps to a few
    ImageNet classes)."""
    from realsyn.embed.calibrate import copy_cosines, pair_cosines, reencode, threshold
    from realsyn.models import load

    model = load("joint", "bridge", "cpu")
    book = sorted((data_dir / "gutenberg" / "30621-h").rglob("*.png"))[:128]
    for name, files in (("CIFAR horse", sorted((data_dir / "cifar10" / "test" / "horse").glob("*.jpg"))), ("Gutenberg", book)):
        data = [f.read_bytes() for f in files]
        copies, emb = copy_cosines(data, model.embed_images)
        pairs = pair_cosines(emb)
        cut = threshold(copies, pairs, 0.05, 0.99)
        report(f"calibrated bridge threshold on {name}: {cut:.4f}; copies above {(copies >= cut).mean():.0%}, "
               f"distinct pairs above {(pairs >= cut).mean():.2%} (n = {len(data)})")
        assert (pairs >= cut).mean() <= 0.011
        if name.startswith("CIFAR"):
            assert (copies >= cut).mean() >= 0.9
    assert reencode(data[0])[:2] == b"\xff\xd8"  # a JPEG
