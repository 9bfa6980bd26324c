"""Fusion of (caption, tags, source text) into one synthetic text: cached, batched LLM calls, the
output guard, one regeneration, then the fallback. No file I/O besides the cache."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from realsyn.models.base import LLM
from realsyn.prompts import Prompt
from realsyn.synth.cache import GenerationCache, cache_key
from realsyn.synth.guard import Guard, clean, fallback_text
from realsyn.synth.tokens import TokenCounter

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Item:
    caption: str
    tags: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Fused:
    text: str
    guard_reason: str | None  # why the last rejected answer was rejected (None: the first was accepted)
    fallback: bool  # the regenerated answer was rejected too: `text` is the fallback


@dataclass(frozen=True)
class Decoding:
    max_tokens: int = 80
    temperature: float = 0.0
    retry_temperature: float = 0.7
    seed: int = 0
    batch_size: int = 16


class CachedLLM:
    """`llm.generate` behind the cache: identical prompts are generated once, misses in batches
    of `batch_size`, each batch stored as soon as it is done. Counts `generated` and `cached`.
    Attempt 0 decodes with `temperature` and `seed`, attempt 1 (the regeneration) with
    `retry_temperature` and `seed + 1`. `stop` (a text no continuation can save) is passed on
    to backends whose `generate` accepts it, to end such rows early; it never changes a verdict."""

    def __init__(self, llm: LLM, model: str, prompt_version: str, cache: GenerationCache | None,
                 decoding: Decoding) -> None:
        self.llm, self.model, self.version, self.cache, self.decoding = llm, model, prompt_version, cache, decoding
        self.counts: Counter = Counter()
        self.takes_stop = "stop" in inspect.signature(llm.generate).parameters

    def __call__(self, prompts: Sequence[Messages], attempt: int = 0,
                 stop: Callable[[str], bool] | None = None) -> list[str]:
        d = self.decoding
        params: dict[str, Any] = dict(max_tokens=d.max_tokens, temperature=d.retry_temperature if attempt else d.temperature,
                                      seed=d.seed + attempt)
        extra: dict[str, Any] = {"stop": stop} if stop is not None and self.takes_stop else {}
        keys = [cache_key(self.model, self.version, m, **params) for m in prompts]
        known = self.cache.get_many(keys) if self.cache is not None else {}
        self.counts["cached"] += sum(k in known for k in keys)
        todo = list({k: m for k, m in zip(keys, prompts) if k not in known}.items())
        for a in range(0, len(todo), d.batch_size):
            batch = todo[a:a + d.batch_size]
            done = dict(zip([k for k, _ in batch], self.llm.generate([m for _, m in batch], **params, **extra)))
            if self.cache is not None:
                self.cache.put_many(done)
            known.update(done)
            self.counts["generated"] += len(batch)
        return [known[k] for k in keys]


def fuse(items: Sequence[Item], prompt: Prompt, llm: CachedLLM, guard: Guard,
         counter: TokenCounter) -> tuple[list[Fused], Counter]:
    """One synthetic text per item, and counts: `regenerated` and `fallback:REASON`."""
    messages = [prompt.messages(i.caption, i.tags, i.source) for i in items]
    first = [clean(t) for t in llm(messages, stop=guard.hopeless)]
    reasons = [guard.check(t, i.caption, i.tags, i.source) for t, i in zip(first, items)]
    retry = [k for k, r in enumerate(reasons) if r]
    out = [Fused(t, r, False) for t, r in zip(first, reasons)]
    counts = Counter(regenerated=len(retry))
    for k, text in zip(retry, llm([messages[k] for k in retry], attempt=1, stop=guard.hopeless)):
        text, item = clean(text), items[k]
        reason = guard.check(text, item.caption, item.tags, item.source)
        if reason is None:
            out[k] = Fused(text, reasons[k], False)
        else:
            out[k] = Fused(fallback_text(item.caption, item.source, counter, guard.max_tokens), reason, True)
            counts[f"fallback:{reason}"] += 1
    return out, counts
