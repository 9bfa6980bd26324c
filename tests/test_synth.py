"""The synth stage: prompts, output guard, CLIP token estimate, cache, fallback, and the stage on a
small hand-made workspace (real photos from scikit-image & co., texts written for the test)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realsyn.config import load_config
from realsyn.models.template_llm import TemplateLLM
from realsyn.prompts import PromptError, load_prompt
from realsyn.runtime.context import Context
from realsyn.runtime.executor import LocalExecutor
from realsyn.runtime.workspace import Workspace
from realsyn.synth import stage
from realsyn.synth.cache import GenerationCache, cache_key
from realsyn.synth.fuse import CachedLLM, Decoding, Item, fuse
from realsyn.synth.guard import Guard, clean, fallback_text, ngrams, words
from realsyn.synth.tokens import REGEX, estimate

# One realistic text per photo: names, places and dates the synthetic text should keep.
TEXTS = {
    "astronaut": ["Eileen Collins became the first woman to pilot a Space Shuttle in February 1995.",
                  "Training for the flight lasted two years and included underwater rehearsals."],
    "coffee": ["The café on Via Veneto in Rome has served espresso to its customers since 1908.",
               "Italian espresso culture spread across Europe after the Second World War."],
    "chelsea": ["Chelsea, the family's tabby, lived with them in Boston for more than fifteen years."],
    "rocket": ["The Falcon 9 rocket lifted off from Cape Canaveral in Florida on 30 May 2020."],
    "motorcycle": ["The Ducati factory in Bologna built its first motorcycle engine in 1946."],
    "china": ["The Summer Palace near Beijing was rebuilt by the Empress Dowager Cixi in 1888."],
    "flower": ["Dahlias were brought from Mexico to the Royal Botanic Garden in Madrid in 1789."],
    "grace_hopper": ["Grace Hopper joined the United States Navy Reserve in 1943 and rose to rear admiral."],
}
STOP = {"a", "an", "the", "of", "or", "and", "photo", "in", "on", "with", "to", "is"}


@pytest.fixture(scope="module")
def prompt():
    return load_prompt("fuse-v1")


@pytest.fixture(scope="module")
def guard(prompt):
    languages = {"Ein Foto einer Katze auf dem Sofa in Berlin.": ("de", 0.99)}
    return Guard.for_prompt(prompt.static_text(), REGEX, language="en",
                            detect=lambda text: languages.get(text, ("en", 0.9)))


# -- prompts ---------------------------------------------------------------------------------------

def test_prompt_file_is_versioned_and_its_examples_follow_the_rules(prompt):
    assert prompt.version == "fuse-v1" and 3 <= len(prompt.examples) <= 4
    msgs = prompt.messages("a photo of a cat", ["tabby cat", "sofa"], "Tom lived in  Leeds\nin 1990.")
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(prompt.examples) + ["user"]
    assert msgs[-1]["content"] == "Caption: a photo of a cat\nTags: tabby cat, sofa\nText: Tom lived in Leeds in 1990."
    for ex in prompt.examples:  # keeps the text's names and numbers, adds a tag, one sentence, <= 60 words
        facts = set(re.findall(r"\b(?:[A-Z][a-z]+|\d+)\b", ex.text)) - {"The", "Designed", "Click"}
        assert facts <= set(re.findall(r"\w+", ex.output)), ex.output
        assert any(t in ex.output.lower() for t in ex.tags) and len(ex.output.split()) <= 60
        assert ex.output.count(". ") == 0 and ex.output.endswith(".")


def test_prompt_by_path_and_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: mine-v2\nsystem: Fuse.\nuser: '{caption} | {tags} | {text}'\n")
    assert load_prompt(str(path)).version == "mine-v2"
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("nope-v9")
    path.write_text("version: bad\nsystem: Fuse.\nuser: '{caption}'\n")
    with pytest.raises(PromptError, match="lacks"):
        load_prompt(str(path))


# -- guard and tokens ------------------------------------------------------------------------------

CAPTION, TAGS = "a photo of an espresso", ("espresso", "cup", "saucer")
SOURCE = "The café on Via Veneto in Rome has served espresso since 1908."


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    (" ".join(["espresso"] * 80), "too_long"),
    ("Caption: an espresso in a cup on Via Veneto in Rome.", "prompt_echo"),
    ("Here is the rewritten sentence: an espresso cup in Rome, 1908.", "prompt_echo"),
    ("Keep the names, places and dates of the text, an espresso.", "prompt_echo"),  # instruction copied
    ("A violin and its bow lie on sheet music of the Beethoven concerto in Rome.", "prompt_echo"),  # few-shot copied
    ("An espresso cup in Rome in 1908, an espresso cup in Rome in 1908.", "repetitive"),
    ("Ein Foto einer Katze auf dem Sofa in Berlin.", "language"),
    ("the café on Via Veneto in Rome has served espresso since 1908", "unchanged"),
    ("A cup of espresso on a saucer at the café on Via Veneto in Rome, serving since 1908.", None),
])
def test_guard_reasons(guard, text, reason):
    assert guard.check(text, CAPTION, TAGS, SOURCE) == reason


def test_hopeless_is_final(guard):
    """A text is hopeless only when every continuation is rejected: the last word may be cut."""
    loop = "the cat sat on a mat, the cat sat on a"
    assert not guard.hopeless(loop)  # "a" may still become "anvil"
    assert guard.hopeless(loop + " mat and")
    assert guard.check(clean(loop + " mat and"), "a cat", ["cat"], "x") == "repetitive"
    long = " ".join(["word"] * 3 + [f"w{i}" for i in range(120)])
    assert guard.hopeless(long) and guard.check(long, "a cat", ["cat"], "x") == "too_long"
    assert not guard.hopeless("A tabby cat naps on a sofa")


def test_guard_allows_prompt_words_that_the_inputs_contain(guard):
    source = "Text: the caption of the 1908 photograph reads 'Via Veneto, Rome'."
    assert guard.check("An espresso cup under the caption 'Via Veneto, Rome', text: 1908.", CAPTION, TAGS, source) is None


def test_clip_token_estimate_and_truncation():
    assert estimate("") == 2 and estimate("a photo of a cat") == 7
    assert estimate("it's 1995!") == 2 + 2 + 4 + 1  # it + 's, four digits, "!"
    assert estimate("café") == 2 + 1 + 1 and estimate("北京") == 2 + 4
    long = " ".join(["photograph"] * 60)
    cut = REGEX.truncate(long, 77)
    assert estimate(cut) <= 77 < estimate(cut + " photograph") and long.startswith(cut)
    fb = fallback_text("a photo of a cat.", long, REGEX)
    assert fb.startswith("a photo of a cat. photograph") and estimate(fb) <= 77


# -- cache and fallback ----------------------------------------------------------------------------

class CountingLLM(TemplateLLM):
    """The template LLM, optionally answering from a script, recording every call."""

    def __init__(self, script: list[str] | None = None) -> None:
        self.calls: list[dict] = []
        self.script = script

    def generate(self, prompts, *, max_tokens=96, temperature=0.0, seed=0):
        self.calls.append({"n": len(prompts), "temperature": temperature, "seed": seed})
        if self.script is not None:
            return [self.script[min(len(self.calls), len(self.script)) - 1]] * len(prompts)
        return super().generate(prompts, max_tokens=max_tokens, temperature=temperature, seed=seed)


def _items() -> list[Item]:
    return [Item("a photo of a cat", ("tabby cat",), t) for t in ("Tom lived in Leeds.", "Ann sailed in 1990.")] * 2


def test_cache_hit_on_rerun(tmp_path, prompt, guard):
    path, decoding = tmp_path / "cache.sqlite", Decoding(batch_size=1)
    first = CountingLLM()
    out1, _ = fuse(_items(), prompt, CachedLLM(first, "template", prompt.version, GenerationCache(path), decoding),
                   guard, REGEX)
    assert len(first.calls) == 2  # four items, two distinct prompts, batches of one
    again = CountingLLM()
    llm = CachedLLM(again, "template", prompt.version, GenerationCache(path), decoding)
    out2, _ = fuse(_items(), prompt, llm, guard, REGEX)
    assert again.calls == [] and out1 == out2 and llm.counts == Counter(cached=4)
    assert out1[0].text == "a photo of a cat, Tom lived in Leeds."
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = cache_key("template", "fuse-v2", prompt.messages("a photo of a cat", ["tabby cat"], "Tom lived in Leeds."),
                      max_tokens=80, temperature=0.0, seed=0)
    assert GenerationCache(path).get_many([other]) == {}  # another prompt version is another key


def test_regeneration_then_fallback(prompt, guard):
    echo = CountingLLM(["Caption: a cat. Tags: tabby cat."])
    out, counts = fuse(_items()[:2], prompt, CachedLLM(echo, "x", prompt.version, None, Decoding()), guard, REGEX)
    assert [(o.guard_reason, o.fallback) for o in out] == [("prompt_echo", True)] * 2
    assert out[0].text == "a photo of a cat. Tom lived in Leeds."
    assert counts == Counter(regenerated=2, **{"fallback:prompt_echo": 2})
    assert [(c["temperature"], c["seed"]) for c in echo.calls] == [(0.0, 0), (0.7, 1)]

    fixed = CountingLLM(["", "A tabby cat sits in Leeds, where Tom lived."])
    out, counts = fuse(_items()[:1], prompt, CachedLLM(fixed, "x", prompt.version, None, Decoding()), guard, REGEX)
    assert out[0].text == "A tabby cat sits in Leeds, where Tom lived."
    assert (out[0].guard_reason, out[0].fallback) == ("empty", False) and counts == Counter(regenerated=1)


# -- the stage -------------------------------------------------------------------------------------

def make_workspace(root: Path, names: list[str], split: bool = True) -> None:
    """Pairs in two parts, each part's images stored in the *other* blob part (`split`), or one part
    and one blob part; plus one image without text."""
    from realsyn.models.imaging import sample_photos

    photos = sample_photos()
    half = len(names) // 2 if split else 0
    groups = [names[:half], names[half:] + ["no-text-image"]]
    for k, group in enumerate(groups):
        texts = [TEXTS.get(n, []) for n in group]
        strings = pa.list_(pa.string())
        pq.write_table(pa.table({
            "image_id": pa.array(group, pa.string()), "doc_id": pa.array(["doc"] * len(group), pa.string()),
            "text_ids": pa.array([[f"{n}-{i}" for i in range(len(t))] for n, t in zip(group, texts)], strings),
            "texts": pa.array(texts, strings), "sims": pa.array([[0.3] * len(t) for t in texts], pa.list_(pa.float32())),
            "cluster": pa.array([k] * len(group), pa.int32()),
        }), _mkdir(root / "retrieve" / "pairs") / f"part-{k:05d}.parquet")
        stored = [n for n in groups[1 - k] if n in photos]
        pq.write_table(pa.table({"image_id": pa.array(stored, pa.string()),
                                 "data": pa.array([photos[n] for n in stored], pa.binary())}),
                       _mkdir(root / "extract" / "blobs") / f"part-{k:05d}.parquet")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(root: Path, **overrides) -> dict:
    ctx = Context(Workspace(root), load_config(None, overrides), LocalExecutor(1))
    return stage.run(ctx, stage.stage_key(ctx))


def test_stage_with_the_template_backend(tmp_path):
    root, names = tmp_path / "w", list(TEXTS)[:4]
    make_workspace(root, names)
    counts = _run(root, **{"models.llm": "template"})
    table = pq.read_table(root / "synth")  # the cache file is skipped when the folder is read as a dataset
    assert set(stage.SCHEMA.names) <= set(table.column_names)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert set(rows) == set(names)
    for name, r in rows.items():
        assert r["source_text"] == TEXTS[name][0] and r["text_index"] == 0 and r["text_id"] == f"{name}-0"
        assert r["syn_text"] == f"{r['caption']}, {TEXTS[name][0]}" and len(r["tags"]) == 5
        assert (r["model"], r["prompt_version"], r["guard_reason"], r["fallback"]) == ("template", "fuse-v1", None, False)
    assert counts["images"] == {"read": 5, "kept": 4, "rejected": 1, "reasons": {"no_text": 1}}
    assert (counts["texts"], counts["generated"], counts["cached"], counts["fallbacks"]) == (4, 4, 0, {})
    assert counts["token_counter"] in ("regex-estimate",) or counts["token_counter"].startswith("clip-bpe")

    (root / "synth" / "part-00000.parquet").unlink()  # a crash lost one part: its generations are cached
    again = _run(root, **{"models.llm": "template"})
    assert again["cached"] == 2 and again["generated"] == 2 and again["images"] == counts["images"]
    assert json.loads((root / "manifest.json").read_text())["stages"]["synth"]["status"] == "done"


def test_stage_one_text_per_retrieved_text(tmp_path):
    root = tmp_path / "w"
    make_workspace(root, ["astronaut", "coffee"])
    counts = _run(root, **{"models.llm": "template", "synth.per_text": "all"})
    table = pq.read_table(root / "synth").sort_by([("image_id", "ascending"), ("text_index", "ascending")])
    assert [(r["image_id"], r["text_index"]) for r in table.to_pylist()] == [
        ("astronaut", 0), ("astronaut", 1), ("coffee", 0), ("coffee", 1)]
    assert table["source_text"].to_pylist() == TEXTS["astronaut"] + TEXTS["coffee"]
    assert counts["texts"] == 4 and counts["images"]["kept"] == 2


def _content_words(text: str) -> set[str]:
    return set(words(text)) - STOP


@pytest.mark.slow
def test_stage_with_smollm2_on_real_photos(tmp_path, prompt):
    root, names = tmp_path / "w", list(TEXTS)
    make_workspace(root, names, split=False)  # one part: one batch of 8 prompts
    counts = _run(root)
    rows = pq.read_table(root / "synth").to_pylist()
    print("\n" + "\n".join(f"[{r['guard_reason']}/{r['fallback']}] {r['syn_text']}" for r in rows), counts)
    assert sorted(r["image_id"] for r in rows) == sorted(names) and counts["images"]["kept"] == len(names)
    assert all(r["syn_text"] and estimate(r["syn_text"]) <= 77 for r in rows)
    differ = [" ".join(words(r["syn_text"])) != " ".join(words(r["source_text"])) for r in rows]
    assert sum(differ) >= 0.9 * len(rows)
    grounded = [_content_words(r["syn_text"]) & _content_words(" ".join([r["caption"], *r["tags"]])) for r in rows]
    assert sum(map(bool, grounded)) >= len(rows) / 2
    fixed = ngrams(prompt.static_text())
    for r in rows:  # no output repeats the prompt's fixed text (beyond what its own inputs say)
        inputs = ngrams(" ".join([r["caption"], *r["tags"], r["source_text"]]))
        assert not (ngrams(r["syn_text"]) & fixed) - inputs, r["syn_text"]
        assert not re.search(r"\b(caption|tags|text)\s*:", r["syn_text"], re.I), r["syn_text"]
