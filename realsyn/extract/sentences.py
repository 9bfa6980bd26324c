"""Sentence splitting and the paper's sentence filters (pure functions, no I/O).

RealSyn (arXiv 2502.12513, Fig. 2) drops a sentence that contains an emoji or a URL, has fewer
than 3 or more than 81 words, fails the CAT rules of DiHT (complexity below C1, or no action), or
has an information entropy below 0.3. The paper leaves the entropy definition and the CAT parser
open; the choices made here are documented on `word_entropy` and `cat_check`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Iterator

import blingfire
import emoji
import lemminflect
import pysbd

__all__ = [
    "REASONS", "split_sentences", "sentence_reason", "word_entropy", "has_emoji", "has_url",
    "cat_check", "normalise_for_dedup", "text_hash", "caption_reason", "CAPTION_REASONS",
]

#: Every reason `sentence_reason` can return, in the order they are checked.
REASONS = ("has_emoji", "has_url", "too_few_words", "too_many_words", "cat_complexity",
           "cat_action", "low_entropy")
#: Every reason `caption_reason` can return (captions and alt texts), in the order they are checked.
CAPTION_REASONS = ("has_url", "placeholder", "boilerplate", "too_few_words", "too_many_words")

# --------------------------------------------------------------------------------------------
# Splitting

SPLITTERS = ("pysbd", "blingfire")
_PYSBD_WINDOW = 1_000  # pysbd is quadratic in its input; it never sees more than this at once
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_PYSBD: tuple[int, pysbd.Segmenter] | None = None


def _segmenter() -> pysbd.Segmenter:
    """One pysbd segmenter per process (re-created after a fork)."""
    global _PYSBD
    if _PYSBD is None or _PYSBD[0] != os.getpid():
        _PYSBD = (os.getpid(), pysbd.Segmenter(language="en", clean=False))
    return _PYSBD[1]


def _cut(text: str, size: int) -> Iterator[str]:
    """Pieces of at most `size` characters, cut at a line break, else after a sentence-final
    mark, else at a space in the second half of each window; a hard cut when there is none."""
    start, n = 0, len(text)
    while n - start > size:
        end, half = start + size, start + size // 2
        cut = text.rfind("\n", half, end)
        if cut < 0:
            cut = max(text.rfind(p, half, end) for p in (". ", "! ", "? "))
            cut = cut + 1 if cut >= 0 else max(text.rfind(c, half, end) for c in " \t\r")
        cut = end if cut <= start else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def _windows(text: str, size: int) -> Iterator[str]:
    """Consecutive blingfire sentences packed into windows of at most `size` characters, so
    every window boundary is a (blingfire) sentence boundary; pysbd decides inside a window."""
    if len(text) <= size:
        yield text
        return
    ends = [e for _, e in blingfire.text_to_sentences_and_offsets(text)[1]] + [len(text)]
    start = last = 0
    for end in ends:
        if end - start > size:
            if last > start:
                yield text[start:last]
                start = last
            if end - start > size:  # one "sentence" longer than a window
                yield from _cut(text[start:end], size)
                start = end
        last = end
    if start < len(text):
        yield text[start:]


def _pysbd_split(text: str) -> list[str]:
    """pysbd on one window; falls back to blingfire when pysbd loses or alters text (it does
    with its placeholder characters such as '∯' or '♨', and on some trailing fragments)."""
    try:
        # The processor directly: Segmenter.segment() adds a quadratic span search, stores the
        # text on the shared segmenter (not thread-safe) and silently drops unmatched sentences.
        out = _segmenter().processor(text).process()
    except Exception:  # noqa: BLE001 - pysbd has no documented exceptions; never fail a part
        out = None
    if out is None or "".join("".join(out).split()) != "".join(text.split()):
        return blingfire.text_to_sentences(text).split("\n")
    return out


def split_sentences(text: str, splitter: str = "pysbd", *, max_chars: int = 100_000) -> list[str]:
    """Split `text` into stripped, non-empty sentences.

    `splitter` is "pysbd" (rule-based, good with abbreviations, ~2 µs per character) or
    "blingfire" (finite-state, about 100x faster). Bounds on pathological input:
    pysbd runs on windows of at most 1,000 characters cut at blingfire sentence boundaries
    (pysbd alone is quadratic: 100k characters take ~5 s, a run of short lines far longer);
    a text longer than `max_chars` is cut at line breaks or spaces into `max_chars` pieces and
    split with blingfire whatever `splitter` says, so a 10 MB paragraph takes about a
    second and ~30 MB. The paper used NLTK punkt, which needs a data download.
    """
    if splitter not in SPLITTERS:
        raise ValueError(f"unknown sentence splitter {splitter!r}; expected one of {SPLITTERS}")
    if not text or text.isspace():
        return []
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)  # lone surrogates cannot be encoded as UTF-8
    text = text.replace("\x00", " ")  # blingfire's output buffer is NUL-terminated
    if len(text) > max_chars:
        splitter = "blingfire"
    out: list[str] = []
    for chunk in _cut(text, max(1, max_chars)):
        if splitter == "blingfire":
            out.extend(blingfire.text_to_sentences(chunk).split("\n"))
        else:
            for window in _windows(chunk, _PYSBD_WINDOW):
                out.extend(_pysbd_split(window))
    return [s for s in (s.strip() for s in out) if s]


# --------------------------------------------------------------------------------------------
# Emoji and URLs

_UNQUALIFIED = emoji.STATUS["unqualified"]


def has_emoji(text: str) -> bool:
    """True when `text` holds an emoji (the `emoji` package's Unicode data).

    Symbols whose default presentation is text (© ® ™ ♥ ✔ ☀ ...) count only when written with
    the emoji variation selector U+FE0F, i.e. "unqualified" emoji are typography, not emoji.
    """
    if text.isascii():
        return False
    for m in emoji.emoji_list(text):
        if emoji.EMOJI_DATA.get(m["emoji"], {}).get("status") != _UNQUALIFIED:
            return True
    return False


# Bare domains need a known top-level domain written in lower case (so "e.g.", "U.S.", "3.14",
# "Node.js" and a missing space as in "left.It" do not match); TLDs that are also English
# words (in, it, to, me, co, news, shop, ...) and every other TLD match only when a path
# follows ("t.co/x").
_TLDS = (
    "com|net|org|edu|gov|mil|info|biz|mobi|asia|xyz|online|app|dev|io|ai|ly|gl|fm|tv|"
    "uk|ca|au|nz|ie|de|fr|es|nl|ch|se|dk|fi|pl|cz|pt|gr|ru|ua|cn|jp|kr|tw|hk|sg|br|mx|ar|za|eu|"
    "il|tr|ir|vn|ph"
)
_URL = re.compile(
    r"(?i:\b(?:https?|ftp)://\S)"
    r"|(?i:\bwww\d{0,3}\.[a-z0-9-]+\.[a-z]{2,})"
    r"|(?<![\w@.-])(?i:(?:[a-z0-9][a-z0-9-]*\.)+)"
    rf"(?:(?:{_TLDS})(?![\w-])|[a-z]{{2,24}}/[\w~%#?=&+-])"
)


def has_url(text: str) -> bool:
    """True when `text` holds a URL: a scheme (http, https, ftp), a `www.` host, or a bare
    domain such as `example.com/path` or `bbc.co.uk`. E-mail addresses do not count."""
    return _URL.search(text) is not None


# --------------------------------------------------------------------------------------------
# Entropy

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def word_entropy(text: str) -> float:
    """Normalised Shannon entropy of the lower-cased word distribution, in [0, 1].

    H = -sum(p_w log p_w) over word types w, divided by log N for N word tokens (regex words,
    punctuation excluded): 1.0 when every token is distinct, 0.0 when one token repeats, and
    0.0 for fewer than 2 tokens. This is an evenness index in the style of Pielou's J
    (E. C. Pielou, J. Theor. Biol. 13:131-144, 1966), normalised by log N, the maximum entropy
    N tokens can reach, rather than Pielou's log S over S types: with log S a repetitive
    "the cat the cat the cat" would score 1.0. The paper's threshold is 0.3 (definition
    unspecified there).
    """
    words = [w.lower() for w in _WORD.findall(text)]
    n = len(words)
    if n < 2:
        return 0.0
    counts = Counter(words)
    if len(counts) == n:
        return 1.0
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    return max(0.0, min(1.0, h / math.log(n)))


# --------------------------------------------------------------------------------------------
# CAT: complexity and action (DiHT)

_AUX = frozenset(
    "am is are was were be been has have had do does did could would shall should may might "
    "'re 'm 've 'd 'll".split())
_MODALS = frozenset("can could will would shall should may might must".split())
_SUBJECTS = frozenset("i you he she it we they who which there".split())
_DETERMINERS = frozenset(
    "a an the this that these those my your his her its our their whose every each some any no "
    "several many few all both either neither another such what which two three four five six "
    "seven eight nine ten dozen hundred thousand million".split())
_PREPOSITIONS = frozenset(
    "of in on at for with by from into onto about over under between through during without "
    "within among across behind beyond near upon toward towards against along around after "
    "before since until via per".split())
_LICENSORS = _SUBJECTS | _MODALS | frozenset(
    "to also never always often still just then now usually sometimes already even only "
    "really".split())
_INTENSIFIERS = frozenset("very so too quite rather really more most less least".split())
_INDEFINITE = frozenset(
    "someone somebody something anyone anybody anything everyone everybody everything nobody "
    "nothing none each one".split())
_COPULAS = frozenset("is are was were be been being am 's 're 'm seems seem looks look became "
                     "become remains remain".split())
# Function words that lemminflect lists as nouns, which are no objects.
_FUNCTION = _SUBJECTS | _DETERMINERS | _PREPOSITIONS | _MODALS | frozenset(
    "me him us them mine yours hers ours theirs myself yourself himself herself itself "
    "ourselves themselves whom whoever whatever other here or and but if than yes not n't".split()
) | _INDEFINITE
_IMPERATIVE_NEXT = (frozenset("a an the your our my his her their this these those it them us me "
                               "some any every all off out up down away back".split())
                    | _PREPOSITIONS) - {"of", "to"}
_IRREGULAR_PLURALS = frozenset("people men women children police mice geese feet teeth".split())
_NEGATIONS = {"cannot": "can", "can't": "can", "won't": "will", "shan't": "shall"}
_PRONOUN_S = frozenset("it he she that there what who where here let this".split())


@lru_cache(maxsize=200_000)
def _readings(word: str) -> frozenset[str]:
    return frozenset(lemminflect.getAllLemmas(word))


@lru_cache(maxsize=200_000)
def _inflected_verb(word: str) -> bool:
    """A verb form other than the base form (walked, sits, riding, saw)."""
    return any(x.lower() != word.lower() for x in lemminflect.getAllLemmas(word).get("VERB", ()))


def _plural(word: str) -> bool:
    return word in _IRREGULAR_PLURALS or (word.endswith("s") and not word.endswith("ss"))


def _tokens(text: str) -> list[str]:
    """Words with clitics split off: "don't" -> do n't, "it's" -> it 's."""
    out: list[str] = []
    for w in _WORD.findall(text.replace("’", "'")):
        low = w.lower()
        if low in _NEGATIONS:
            out += [_NEGATIONS[low], "n't"]
        elif low.endswith("n't") and len(w) > 3:
            out += [w[:-3], "n't"]
        elif "'" in w:
            base, _, clitic = w.rpartition("'")
            out += [base, "'" + clitic] if clitic.lower() in ("s", "re", "m", "ve", "d", "ll") else [w]
        else:
            out.append(w)
    return out


def _roles(text: str) -> list[str]:
    """A role per token: "verb", "noun" or "" (anything else), by lexicon and local context."""
    tokens = _tokens(text)
    roles: list[str] = []
    for i, tok in enumerate(tokens):
        low = tok.lower()
        prev = tokens[i - 1].lower() if i else ""
        prev_role = roles[i - 1] if i else ""
        if low == "'s":  # is/has after a pronoun, else a possessive
            roles.append("verb" if prev in _PRONOUN_S else "")
            continue
        if low in _AUX:
            roles.append("verb")
            continue
        if low in _FUNCTION and low not in _MODALS:
            roles.append("")
            continue
        r = _readings(tok)
        prev_r = _readings(tokens[i - 1]) if i else frozenset()
        nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
        inflected = "VERB" in r and _inflected_verb(tok)
        third_person = inflected and low.endswith("s") and not low.endswith("ss")
        noun_context = ((prev in _DETERMINERS and not (third_person and prev in ("this", "that")))
                        or prev in _PREPOSITIONS or prev.isdigit()
                        or (prev_r == {"ADJ"} and prev not in _LICENSORS))
        negated = prev in ("not", "n't") and i > 1 and tokens[i - 2].lower() in _AUX | _MODALS
        verb = False
        if low in _MODALS:
            verb = not noun_context
        elif r and r <= {"VERB", "AUX"}:
            verb = True
        elif "VERB" in r and not noun_context:
            if prev in _LICENSORS or negated or (prev.endswith("ly") and "ADV" in prev_r):
                verb = True
            elif third_person:  # "flows": a verb after a noun or pronoun, else a plural noun
                verb = (prev_role == "noun" or prev in _SUBJECTS or prev in _INDEFINITE
                        or prev in ("this", "that"))
            elif inflected:  # walked, riding, saw
                verb = True
            elif prev_role == "noun" and _plural(prev):  # "two people walk along the river"
                verb = True
            elif i == 0 and nxt in _IMPERATIVE_NEXT and tokens[i + 1].islower():
                # an imperative: "Find the ...", "Turn off" (not a title: "Home | About")
                verb = True
        if verb:
            roles.append("verb")
        elif "NOUN" in r and not ("ADJ" in r and (prev in _INTENSIFIERS or prev in _COPULAS)
                                  and (not nxt or _readings(tokens[i + 1]) == {"ADJ"})):
            roles.append("noun")
        elif not r and tok.isalpha() and (tok[0].isupper() or len(tok) >= 3):
            roles.append("noun")  # out of the lexicon: proper noun or unknown (mostly nominal) word
        else:
            roles.append("")
    return roles


def cat_check(text: str) -> str | None:
    """The complexity and action rules of CAT (DiHT: Radenovic et al., "Filtering,
    Distillation, and Hard Negatives for Vision-Language Pre-Training", CVPR 2023):
    "cat_complexity" when the text names no object (complexity below C1), "cat_action" when it
    has no verb, else None. Text-spotting needs the image and is not applied here.

    Approximation: DiHT parses captions; this uses no parser model. Candidate parts of speech
    come from the `lemminflect` lexicon (`getAllLemmas`; its OOV lemmatiser is not used, as it
    accepts any word for any tag), and a few local rules resolve ambiguous words: a word after a
    determiner, preposition or adjective is a noun; an ambiguous base form ("career") is a verb
    only after a subject pronoun, modal, "to", a negated auxiliary or an adverb; inflected
    forms (walked, riding, saw) are verbs, "-s" forms ("flows") only after a noun or pronoun;
    an ambiguous base form after a plural noun is a verb ("two dogs play"), and so is a
    sentence-initial one followed by an object or particle ("Turn off the flame"); every form
    of be/have/do and the modals counts as a verb (so "X was a Y" has an action). Pronouns
    and determiners are not objects; words outside the lexicon (names, rare nouns) are.
    Known misses: some imperatives ("Click here") fail the action rule; headings with an
    "-ing" or "-ed" word ("Further reading", "Selected works") pass it.
    """
    roles = _roles(text)
    if "noun" not in roles:
        return "cat_complexity"
    if "verb" not in roles:
        return "cat_action"
    return None


# --------------------------------------------------------------------------------------------
# The combined filter

def sentence_reason(text: str, *, min_words: int = 3, max_words: int = 81,
                    min_entropy: float = 0.3, reject_emoji: bool = True, reject_url: bool = True,
                    cat: bool = True) -> str | None:
    """None when the sentence passes the paper's quality filters, else the first failing
    reason among `REASONS`. Words are whitespace-separated tokens."""
    if reject_emoji and has_emoji(text):
        return "has_emoji"
    if reject_url and has_url(text):
        return "has_url"
    if (reason := _length_reason(text, min_words, max_words)) is not None:
        return reason
    if cat:
        reason = cat_check(text)
        if reason is not None:
            return reason
    if min_entropy > 0 and word_entropy(text) < min_entropy:
        return "low_entropy"
    return None


_CAPTION_PLACEHOLDER = re.compile(
    r"^(?:see (?:the )?caption|caption|image|img|photo(?:graph)?|picture|icon|logo|thumbnail|illustration|figure|"
    r"untitled|no (?:image|description)|placeholder|\S+\.(?:jpe?g|png|gif|webp|svg|bmp|tiff?))\W*$", re.I)
_CAPTION_BOILERPLATE = re.compile(
    r"(?:\b(?:click|tap)\b.*\b(?:enlarge|zoom|view|here)\b|^\W*enlarge\W*$|^(?:view|download|open|see) "
    r"(?:larger|full|original|image)|\bcopyright\b|\u00a9|all rights reserved|^\W*(?:photo|image|picture)s?\s*"
    r"(?:credit|courtesy|source)|^\W*(?:credit|source|courtesy)\s*:)", re.I)


def caption_reason(text: str, *, min_words: int = 2, max_words: int = 81, reject_url: bool = True) -> str | None:
    """None when a figure caption or alt text may enter the pool, else the first failing reason
    among `CAPTION_REASONS`. Captions are short noun phrases by nature ("Vacant wall in the
    Salon Carré, Louvre"), so the sentence rules that expect prose (CAT's verb, entropy,
    perplexity) do not apply: only length, URLs, placeholders and credit/click boilerplate."""
    if reject_url and has_url(text):
        return "has_url"
    if _CAPTION_PLACEHOLDER.match(text.strip()):
        return "placeholder"
    if _CAPTION_BOILERPLATE.search(text):
        return "boilerplate"
    return _length_reason(text, min_words, max_words)


def _length_reason(text: str, min_words: int, max_words: int) -> str | None:
    n = len(text.split())
    return "too_few_words" if n < min_words else "too_many_words" if n > max_words else None


# --------------------------------------------------------------------------------------------
# Exact (perceptual) dedup keys

@lru_cache(maxsize=1)
def _punctuation() -> dict[int, None]:
    """All Unicode punctuation (general category P*), for str.translate (built once, ~0.3 s)."""
    return {i: None for i in range(0x110000) if unicodedata.category(chr(i))[0] == "P"}


def normalise_for_dedup(text: str) -> str:
    """NFKC, case-folded (a stronger lower-casing: "ß" -> "ss"), NFKC again (case folding can
    denormalise: "ῒ" and its upper case fold to different sequences otherwise), Unicode
    punctuation deleted, whitespace collapsed to single spaces."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.translate(_punctuation()).split())


def text_hash(text: str) -> int:
    """Signed int64 key of `normalise_for_dedup(text)` (BLAKE2b, 8 bytes, little-endian):
    the same on every process and machine, unlike Python's salted hash()."""
    data = normalise_for_dedup(text).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
