"""Versioned fusion prompts: YAML files in `realsyn/prompts/` (or any path to one).

A prompt file has `version` (recorded in every output row as `prompt_version`), `system` (the
instruction), `user` (a template with `{caption}`, `{tags}` and `{text}`) and `examples` (few-shot
pairs: caption, tags, text -> output). Changing a prompt means a new file with a new version, so
cached generations and outputs of the old one stay traceable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from realsyn.errors import UserError

FIELDS = ("caption", "tags", "text")
MAX_PROMPT_BYTES = 1 << 20


class PromptError(UserError, ValueError):
    """A prompt cannot be found or is malformed; one-line message."""


@dataclass(frozen=True)
class Example:
    caption: str
    tags: tuple[str, ...]
    text: str
    output: str


@dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    user: str
    examples: tuple[Example, ...]

    def render(self, caption: str, tags: Sequence[str], text: str) -> str:
        """The user message for one input."""
        return self.user.format(caption=caption, tags=", ".join(tags), text=" ".join(text.split()))

    def messages(self, caption: str, tags: Sequence[str], text: str) -> list[dict[str, str]]:
        """Chat messages: system, the few-shot turns, then the input."""
        out = [{"role": "system", "content": self.system}]
        for ex in self.examples:
            out += [{"role": "user", "content": self.render(ex.caption, ex.tags, ex.text)},
                    {"role": "assistant", "content": ex.output}]
        return out + [{"role": "user", "content": self.render(caption, tags, text)}]

    def static_text(self) -> str:
        """Everything the model sees that is not the input: instruction, template words and
        examples (the guard flags outputs that repeat it)."""
        template = re.sub(r"\{\w+\}", " ", self.user)
        shots = [f"{self.render(e.caption, e.tags, e.text)}\n{e.output}" for e in self.examples]
        return "\n".join([self.system, template, *shots])


def _parse(data: object, where: str) -> Prompt:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("version", "system", "user")):
        raise PromptError(f"prompt {where} needs string fields version, system and user")
    missing = [f for f in FIELDS if "{" + f + "}" not in data["user"]]
    if missing:
        raise PromptError(f"prompt {where}: user template lacks {', '.join('{' + m + '}' for m in missing)}")
    try:
        examples = tuple(Example(str(e["caption"]), tuple(map(str, e["tags"])), str(e["text"]), str(e["output"]))
                         for e in data.get("examples") or [])
    except (KeyError, TypeError) as exc:
        raise PromptError(f"prompt {where}: every example needs caption, tags, text and output ({exc})") from None
    return Prompt(data["version"], data["system"].strip(), data["user"], examples)


def available() -> list[str]:
    """Names of the prompts shipped with the package."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def prompt_path(name: str) -> Path:
    """The file a prompt name stands for: the path itself, or the shipped YAML of that version."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return Path(str(resources.files(__package__).joinpath(f"{name}.yaml")))


def load_prompt(name: str) -> Prompt:
    """A shipped prompt by name (`fuse-v1`) or a YAML file by path (read on every call)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise PromptError(f"prompt file {name} not found")
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_PROMPT_BYTES + 1)
            if len(raw) > MAX_PROMPT_BYTES:
                raise PromptError(f"prompt file {name} is over {MAX_PROMPT_BYTES} bytes: not a prompt")
            data = yaml.safe_load(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise PromptError(f"prompt file {name} is not a prompt YAML file ({str(exc).splitlines()[0]})") from None
        return _parse(data, name)
    return _shipped(name)


@cache
def _shipped(name: str) -> Prompt:
    if name not in available():
        raise PromptError(f"unknown prompt '{name}'; available: {', '.join(available())}")
    prompt = _parse(yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text()), name)
    if prompt.version != name:
        raise PromptError(f"prompt file {name}.yaml declares version '{prompt.version}'")
    return prompt
