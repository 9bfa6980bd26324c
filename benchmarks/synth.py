"""Synth throughput with the embedded models: images/s for the whole per-image work (tags, caption,
LLM fusion behind the output guard, regeneration included; no cache), batched as the stage runs it,
against the unbatched route (one image at a time: tag, caption, generate) measured in the same run.

Inputs: the 13 real photos bundled with scikit-image, scikit-learn and matplotlib, re-encoded at
longer sides 384, 640 and 1024 px, each paired with realistic texts written for this benchmark
(names, places, dates), 32 (image, text) pairs by default, so no two prompts are equal.
Defaults: `smollm2` (transformers engine), prompt `fuse-v1`, the config's synth settings, 2 threads.
Target (2 cores): >= 2 images/s and >= 2x the unbatched route.

    python benchmarks/synth.py [--images 128] [--unbatched 8] [--batch-size 64] [--llm smollm2]
                               [--prompt fuse-v1] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
SIDES = (384, 640, 1024)
TEXTS = {
    "astronaut": ["Eileen Collins became the first woman to pilot a Space Shuttle in February 1995.",
                  "The official NASA portrait was taken at the Johnson Space Center in Houston before the mission.",
                  "Training for the flight lasted two years and included underwater spacewalk rehearsals."],
    "camera": ["The photographer spent the summer of 1978 documenting daily life on the campus of MIT.",
               "Early film cameras were often mounted on heavy wooden tripods to keep long exposures sharp.",
               "The camera was made by Hasselblad in Gothenburg, Sweden, in the 1960s."],
    "chelsea": ["Chelsea, the family's tabby, lived with them in Boston for more than fifteen years.",
                "The shelter in Portland places around two thousand cats in new homes every year.",
                "The cat appeared in a 2004 advertising campaign for a London pet food company."],
    "coffee": ["The café on Via Veneto in Rome has served espresso to its customers since 1908.",
               "Italian espresso culture spread across Europe after the Second World War.",
               "The espresso machine was patented by Angelo Moriondo in Turin in 1884."],
    "hubble_deep_field": ["The Hubble Deep Field was assembled from 342 exposures taken over ten days in December 1995.",
                          "Astronomers in Baltimore chose a dark patch of sky near the Big Dipper for the survey.",
                          "The image shows galaxies up to twelve billion light years away from Earth."],
    "immunohistochemistry": ["The sample was stained at the pathology laboratory of the University of Oslo in 2011.",
                             "Immunohistochemistry uses antibodies to show where specific proteins sit inside tissue."],
    "moon": ["Apollo 11 landed in the Sea of Tranquility on 20 July 1969.",
             "The Lick Observatory in California photographed the full Moon through its great refractor in 1890.",
             "Galileo Galilei drew the lunar surface after observing it from Padua in 1609."],
    "rocket": ["The Falcon 9 rocket lifted off from Cape Canaveral in Florida on 30 May 2020.",
               "Engineers at Vandenberg rolled the launch vehicle to the pad two days before the flight."],
    "coins": ["The hoard of Roman silver denarii was found by a farmer near Frome in Somerset in 2010.",
              "These coins were minted in Athens during the fifth century BC."],
    "motorcycle": ["The Ducati factory in Bologna built its first motorcycle engine in 1946.",
                   "The bike won its class at the Isle of Man TT races in June 1978."],
    "china": ["The Summer Palace near Beijing was rebuilt by the Empress Dowager Cixi in 1888.",
              "The pagoda above Kunming Lake has been a UNESCO World Heritage Site since 1998."],
    "flower": ["The dahlia garden at Golden Gate Park in San Francisco blooms from July to October.",
               "Dahlias were brought from Mexico to the Royal Botanic Garden in Madrid in 1789."],
    "grace_hopper": ["Grace Hopper joined the United States Navy Reserve in 1943 and rose to the rank of rear admiral.",
                     "She worked on the Harvard Mark I computer and later led the team that created COBOL."],
}


def inputs(n: int) -> list[tuple[bytes, str]]:
    """`n` distinct (JPEG bytes, text) pairs: every text with its photo, cycled if n is larger."""
    from PIL import Image

    from realsyn.models.imaging import sample_photos

    photos = sample_photos()
    pairs = []
    for name, texts in TEXTS.items():
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        for k, text in enumerate(texts):
            scale = SIDES[k % len(SIDES)] / max(image.size)
            buf = io.BytesIO()
            image.resize((round(image.width * scale), round(image.height * scale))).save(buf, "JPEG", quality=90)
            pairs.append((buf.getvalue(), text))
    # past the first round a numbered figure note keeps every prompt distinct (no cache hits)
    return [(img, text if i < len(pairs) else f"{text} (Figure {i // len(pairs) + 1}.)")
            for i, (img, text) in ((i, pairs[i % len(pairs)]) for i in range(n))]


class Route:
    """The per-image synth work with the stage's models and settings, without the cache."""

    def __init__(self, a: argparse.Namespace) -> None:
        from realsyn.config import load_config
        from realsyn.models import load
        from realsyn.prompts import load_prompt
        from realsyn.synth.guard import Guard
        from realsyn.synth.tokens import counter

        overrides = {"synth.prompt": a.prompt, "models.llm": a.llm}
        if a.batch_size is not None:
            overrides["synth.batch_size"] = a.batch_size
        self.cfg = load_config(None, overrides)
        s, m = self.cfg.synth, self.cfg.models
        self.tagger, self.captioner = load("tagger", m.tagger, "cpu"), load("captioner", m.captioner, "cpu")
        self.llm = load("llm", m.llm, "cpu")
        langid = load("langid", m.langid, "cpu")
        self.prompt, self.tokens = load_prompt(s.prompt), counter()
        self.guard = Guard.for_prompt(self.prompt.static_text(), self.tokens, max_tokens=s.max_clip_tokens,
                                      language=s.language, detect=lambda t: langid.detect([t])[0])

    def run(self, pairs: list[tuple[bytes, str]], batch: int) -> tuple[float, float, Counter]:
        """(describe seconds, generate seconds, counts) for `pairs` in batches of `batch` images."""
        from realsyn.synth.fuse import CachedLLM, Decoding, Item, fuse

        s = self.cfg.synth
        describe = generate = 0.0
        counts: Counter = Counter()
        for a in range(0, len(pairs), batch):
            chunk = pairs[a:a + batch]
            t0 = time.perf_counter()
            images = [p[0] for p in chunk]
            tags = self.tagger.tag(images, k=s.tags_k)
            captions = self.captioner.caption(images)
            t1 = time.perf_counter()
            items = [Item(c, tuple(n for n, _ in t), text) for c, t, (_, text) in zip(captions, tags, chunk)]
            llm = CachedLLM(self.llm, self.cfg.models.llm, self.prompt.version, None,
                            Decoding(s.max_tokens, s.temperature, s.retry_temperature, 0, batch))
            _, fuse_counts = fuse(items, self.prompt, llm, self.guard, self.tokens)
            describe, generate = describe + t1 - t0, generate + time.perf_counter() - t1
            counts.update(fuse_counts + llm.counts)
        return describe, generate, counts


def prompt_tokens(route: Route, pairs: list[tuple[bytes, str]]) -> float | None:
    """Mean prompt length in LLM tokens (when the backend exposes a tokenizer)."""
    tok = getattr(route.llm, "tokenizer", None)
    if tok is None:
        return None
    msgs = [route.prompt.messages("a photo of a cat", ["tabby cat"] * route.cfg.synth.tags_k, t) for _, t in pairs]
    return sum(len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for m in msgs) / len(msgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--unbatched", type=int, default=8, help="images for the one-at-a-time route")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's synth.batch_size")
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--prompt", default="fuse-v1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    pairs = inputs(a.images)
    t0 = time.perf_counter()
    route = Route(a)
    route.run(pairs[-1:], 1)  # warm-up: every model loaded and run once
    load_s = time.perf_counter() - t0
    a.batch_size = route.cfg.synth.batch_size
    describe, generate, counts = route.run(pairs, a.batch_size)
    one = pairs[:a.unbatched]
    u_describe, u_generate, u_counts = route.run(one, 1)
    rate, u_rate = len(pairs) / (describe + generate), len(one) / (u_describe + u_generate)
    result: dict[str, Any] = {
        "images_per_s": round(rate, 3), "unbatched_images_per_s": round(u_rate, 3),
        "speedup_vs_unbatched": round(rate / u_rate, 2),
        "describe_s_per_image": round(describe / len(pairs), 3), "generate_s_per_image": round(generate / len(pairs), 3),
        "unbatched_generate_s_per_image": round(u_generate / len(one), 3),
        "generated": counts["generated"], "regenerated": counts["regenerated"],
        "fallbacks": sum(v for k, v in counts.items() if k.startswith("fallback:")),
        "unbatched_regenerated": u_counts["regenerated"],
        "prompt_tokens_mean": prompt_tokens(route, pairs), "load_and_warmup_s": round(load_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "params": {"images": len(pairs), "unbatched_images": len(one), "batch_size": a.batch_size, "llm": a.llm,
                   "prompt": route.prompt.version, "max_tokens": route.cfg.synth.max_tokens,
                   "temperature": route.cfg.synth.temperature, "tagger": route.cfg.models.tagger,
                   "captioner": route.cfg.models.captioner, "threads": a.threads,
                   "token_counter": route.tokens.name, "torch": torch.__version__},
    }
    print(f"{'route':<12}{'images':>8}{'images/s':>10}{'describe s/img':>16}{'generate s/img':>16}")
    print(f"{'batched':<12}{len(pairs):>8}{rate:>10.3f}{describe / len(pairs):>16.3f}{generate / len(pairs):>16.3f}")
    print(f"{'unbatched':<12}{len(one):>8}{u_rate:>10.3f}{u_describe / len(one):>16.3f}{u_generate / len(one):>16.3f}")
    print(f"speedup {rate / u_rate:.2f}x; regenerated {counts['regenerated']}, fallbacks {result['fallbacks']}; "
          f"prompt tokens {result['prompt_tokens_mean']}")
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
