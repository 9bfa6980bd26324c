"""A deterministic stand-in LLM (role `llm`, name `template`) for fast tests only, never a default.

`generate` reads the fields of the last user message, lines `Caption: ...`, `Tags: ...` and
`Text: ...` (case-insensitive; the layout of the shipped fusion prompts), and answers
"<caption>, <text>"; with no such fields it answers the message's first line. Decoding parameters
are accepted and ignored. `perplexity` is not implemented (NotImplementedError): the template
backend cannot score text, so the perplexity filter needs a real LLM.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_FIELD = re.compile(r"^\s*(caption|tags|text)\s*:\s*(.*)$", re.I | re.M)


def _answer(messages: list[dict]) -> str:
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    fields = {k.lower(): v.strip() for k, v in _FIELD.findall(user)}
    if "caption" not in fields and "text" not in fields:
        return user.strip().split("\n", 1)[0]
    return ", ".join(v for v in (fields.get("caption", "").rstrip("."), fields.get("text", "")) if v)


class TemplateLLM:
    name = "template"

    def generate(self, prompts: Sequence[list[dict]], *, max_tokens: int = 96,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        return [_answer(list(m)) for m in prompts]

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("the template LLM cannot score text; configure models.llm = smollm2")


def build(args: str, device: str) -> TemplateLLM:
    return TemplateLLM()
