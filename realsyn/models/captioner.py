"""Template captions from the EfficientNet-Lite0 tagger (role `captioner`, name `tags`): no weights needed.

"a photo of an espresso", "a photo of a tiger cat or an Egyptian cat". The top class is always named;
up to N-1 runners-up join with "or" when their probability is at least half the top one's
(spec `tags[:N]`, default N=2). Deterministic. Only ImageNet-1k concepts can be named (see bridge.py).
"""

from __future__ import annotations

from typing import Sequence

from realsyn.models import registry
from realsyn.models.base import Tagger

RUNNER_UP_RATIO = 0.5
# names read without an article: plurals and mass nouns
NO_ARTICLE = {"binoculars", "sunglasses", "parallel bars", "swimming trunks", "hay", "wool", "velvet",
              "guacamole", "carbonara", "red wine", "consomme", "chocolate sauce", "dough", "ice cream",
              "mashed potato", "toilet tissue", "broccoli", "cauliflower", "corn", "rapeseed", "eggnog"}
A_BEFORE_VOWEL = ("uni", "use", "usu", "uti", "eu", "one", "once")  # vowel letter, consonant sound
AN_BEFORE_H = ("hour", "honest", "honor", "honour", "heir")  # silent h


def with_article(name: str) -> str:
    """"espresso" -> "an espresso", "unicycle" -> "a unicycle", "binoculars" -> "binoculars"."""
    if name in NO_ARTICLE:
        return name
    low = name.lower()
    vowel_sound = (low[:1] in "aeiou" and not low.startswith(A_BEFORE_VOWEL)) or low.startswith(AN_BEFORE_H)
    return f"{'an' if vowel_sound else 'a'} {name}"


def compose(tags: Sequence[tuple[str, float]], max_names: int = 2) -> str:
    """One caption from (name, probability) pairs sorted by probability."""
    if not tags:
        return "a photo"
    top = tags[0][1]
    names: list[str] = []
    for name, prob in tags:
        if len(names) == max_names or (names and prob < RUNNER_UP_RATIO * top):
            break
        if name not in names:
            names.append(name)
    phrases = [with_article(n) for n in names]
    listed = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} or {phrases[-1]}"
    return f"a photo of {listed}"


class TagCaptioner:
    name = "tags"

    def __init__(self, tagger: Tagger, max_names: int = 2) -> None:
        self.tagger, self.max_names = tagger, max_names

    def caption(self, images: Sequence[bytes]) -> list[str]:
        return [compose(t, self.max_names) for t in self.tagger.tag(images, k=self.max_names + 1)]


def build(args: str, device: str) -> TagCaptioner:
    max_names = registry.int_arg(args, 2, "tags", "the number of names")
    return TagCaptioner(registry.load("tagger", "effnet", device), max_names)
