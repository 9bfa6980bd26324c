"""The extraction filters: sentence splitting and filters, dedup keys, image checks."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from realsyn.extract.images import hamming, inspect_image
from realsyn.extract.sentences import (
    REASONS,
    cat_check,
    has_emoji,
    has_url,
    normalise_for_dedup,
    sentence_reason,
    split_sentences,
    text_hash,
    word_entropy,
)

PROSE = ("Dr. Smith went to Washington, D.C. on Jan. 5th to meet the U.S. president. "
         "He arrived at 3 p.m. and left early. The meeting was held in the Oval Office, e.g. "
         "the main room. Prices rose 3.5% last year; analysts were surprised! Was it expected?")
PROSE_SENTENCES = [
    "Dr. Smith went to Washington, D.C. on Jan. 5th to meet the U.S. president.",
    "He arrived at 3 p.m. and left early.",
    "The meeting was held in the Oval Office, e.g. the main room.",
    "Prices rose 3.5% last year; analysts were surprised!",
    "Was it expected?",
]

# ------------------------------------------------------------------------------------------
# Splitting


@pytest.mark.parametrize("splitter", ["pysbd", "blingfire"])
def test_split_sentences(splitter):
    assert split_sentences(PROSE, splitter) == PROSE_SENTENCES
    assert split_sentences("", splitter) == []
    assert split_sentences(" \n\t ", splitter) == []


def test_split_unknown_splitter():
    with pytest.raises(ValueError, match="nltk"):
        split_sentences("A sentence.", "nltk")


def test_split_keeps_text_pysbd_would_lose():
    # pysbd uses "∯" and "♨" as placeholders and mangles text that contains them.
    text = "The symbol ∯ is rare. Hot springs are marked ♨ on maps. Done here."
    out = split_sentences(text)
    assert "".join("".join(out).split()) == "".join(text.split())


def test_split_huge_input_is_bounded():
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    big = sentence * (10_000_000 // len(sentence))  # 10 MB, one paragraph
    t0 = time.perf_counter()
    out = split_sentences(big, "pysbd")  # falls back to blingfire above max_chars
    assert time.perf_counter() - t0 < 15
    assert len(out) == pytest.approx(len(big) / len(sentence), rel=0.01)
    t0 = time.perf_counter()
    out = split_sentences("x" * 10_000_000)  # no whitespace at all: hard cuts
    assert time.perf_counter() - t0 < 10
    assert sum(map(len, out)) == 10_000_000


def test_split_pysbd_is_windowed():
    # pysbd alone is quadratic here (many short lines): ~8 s for 20k characters.
    t0 = time.perf_counter()
    out = split_sentences("Line one\n" * 2_000, "pysbd")
    assert time.perf_counter() - t0 < 5
    assert len(out) >= 1 and "".join(out).count("Line one") == 2_000


# ------------------------------------------------------------------------------------------
# Sentence filters


@pytest.mark.parametrize("text, reason", [
    ("The cat sleeps on the warm sofa 😀", "has_emoji"),
    ("The recipe is posted at https://example.com/recipe today.", "has_url"),
    ("Nice photo.", "too_few_words"),
    (" ".join(["The dog runs."] * 28), "too_many_words"),  # 84 words
    ("It was very good.", "cat_complexity"),
    ("Early life and career", "cat_action"),
    ("The dog barks barks barks barks barks barks barks barks barks barks.", "low_entropy"),
    ("Ray Charles was an American singer.", None),
    ("A man riding a horse on the beach.", None),
])
def test_sentence_reason(text, reason):
    assert sentence_reason(text) == reason
    assert reason is None or reason in REASONS


def test_sentence_reason_first_failing_and_switches():
    text = "Visit www.example.com 😀"  # emoji, URL and CAT all fail: emoji is checked first
    assert sentence_reason(text) == "has_emoji"
    assert sentence_reason(text, reject_emoji=False) == "has_url"
    assert sentence_reason(text, reject_emoji=False, reject_url=False) == "cat_action"
    assert sentence_reason(text, reject_emoji=False, reject_url=False, cat=False) is None
    assert sentence_reason("Nice photo.", min_words=2, cat=False) is None
    assert sentence_reason("a b c d", max_words=3) == "too_many_words"


def test_word_entropy():
    assert word_entropy("Ray Charles was an American singer.") == 1.0
    assert word_entropy("the the the the") == 0.0
    assert word_entropy("word") == 0.0 and word_entropy("") == 0.0 and word_entropy("!!") == 0.0
    assert word_entropy("a b") == 1.0
    assert word_entropy("a a b b") == pytest.approx(0.5)
    assert word_entropy("a a a b") == pytest.approx(0.405639, abs=1e-6)
    assert word_entropy("The, THE. the!") == 0.0  # lower-cased, punctuation ignored


@pytest.mark.parametrize("text", ["I love it 😀", "Nice 👍🏽", "🇫🇷 flag", "☕ time", "❤️ you", "1️⃣ first"])
def test_has_emoji_positive(text):
    assert has_emoji(text)


@pytest.mark.parametrize("text", ["© 2020 Getty Images", "Coca-Cola®", "Brand™", "→ next", "★ rating",
                                  "I ♥ NY", "✔ done", "plain text", "Café au lait"])
def test_has_emoji_negative(text):
    assert not has_emoji(text)


@pytest.mark.parametrize("text", [
    "Visit https://example.com now", "see www.example.org for details", "Go to example.com/path today",
    "Read more at bbc.co.uk.", "Short link bit.ly/abc", "Docs at user.github.io today", "HTTP://EXAMPLE.COM",
    "shop at Amazon.com today", "link t.co/xyz9",
])
def test_has_url_positive(text):
    assert has_url(text)


@pytest.mark.parametrize("text", [
    "e.g. this one", "the U.S. army", "pi is 3.14159", "i.e. that", "at 5 p.m. today", "Fig. 3 shows",
    "He left.It rained", "version 2.0.1", "Mr. Smith", "Node.js is fast", "and/or", "1.5 km/h", "Ph.D. thesis",
    "ca. 1900", "mail john@example.com",
])
def test_has_url_negative(text):
    assert not has_url(text)


@pytest.mark.parametrize("text, reason", [
    ("Early life and career", "cat_action"),
    ("Ray Charles was an American singer.", None),
    ("Personal life", "cat_action"),
    ("Hubble Deep Field image of distant galaxies.", "cat_action"),
    ("It is what it is.", "cat_complexity"),
    ("They run.", "cat_complexity"),
    ("The cat sits on the mat.", None),
    ("She lives in Paris.", None),
    ("This shows the main hall.", None),
    ("Two people walk along the river.", None),
    ("The man saw a dog.", None),
    ("Turn off the flame.", None),
    ("Grace Hopper wore her naval uniform.", None),
])
def test_cat_check(text, reason):
    assert cat_check(text) == reason


def test_text_hash_normalisation():
    assert normalise_for_dedup("  Hello,\tWORLD!! ") == "hello world"
    assert normalise_for_dedup("Ｆｕｌｌ ｗｉｄｔｈ") == "full width"  # NFKC
    a = text_hash("The cat sat on the mat.")
    assert a == text_hash("the cat  sat on the mat") == text_hash("THE CAT SAT ON THE MAT!")
    assert a != text_hash("The cat sat on the hat.")
    assert -(1 << 63) <= a < 1 << 63
    assert text_hash("Hello, World!") == 5814608031911216775  # pinned: same on every machine


_WORDS = st.lists(st.text(st.characters(categories=("Ll", "Lu", "Nd")), min_size=1, max_size=8),
                  min_size=1, max_size=12)


@given(words=_WORDS, data=st.data())
@settings(max_examples=150, deadline=None)
def test_text_hash_insensitive(words, data):
    spaces = st.sampled_from([" ", "  ", "\t", "\n", " \u00a0"])
    marks = st.sampled_from(["", ",", ".", "!", "?", ";", "\"", "'", "…", "—", "(", ")"])
    parts = []
    for w in words:
        # upper case where Unicode case folding round-trips (not e.g. Turkish dotless "ı" -> "I")
        upper = w.upper() if normalise_for_dedup(w.upper()) == normalise_for_dedup(w) else w
        parts.append(data.draw(marks) + (upper if data.draw(st.booleans()) else w) + data.draw(marks))
        parts.append(data.draw(spaces))
    assert text_hash("".join(parts)) == text_hash(" ".join(words))


@given(st.text(st.characters(exclude_categories=()), max_size=400))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_text_functions_never_raise(text):
    for splitter in ("pysbd", "blingfire"):
        for s in split_sentences(text, splitter):
            assert s and s == s.strip()
    reason = sentence_reason(text)
    assert reason is None or reason in REASONS
    assert 0.0 <= word_entropy(text) <= 1.0
    assert isinstance(text_hash(text), int)


# ------------------------------------------------------------------------------------------
# Images


def _photo(w: int = 320, h: int = 240) -> Image.Image:
    """A deterministic natural-looking RGB image (smooth gradients plus shapes)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 255 * x / w
    b = 255 * ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8), "RGB")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A real small PNG whose IHDR is patched to declare width x height (CRC fixed)."""
    data = bytearray(_encode(Image.new("L", (10, 10)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_image_ok_and_fields():
    data = _encode(_photo(), "JPEG", quality=90)
    c = inspect_image(data)
    assert c.reason is None and (c.width, c.height, c.format) == (320, 240, "JPEG")
    assert isinstance(c.phash, int) and -(1 << 63) <= c.phash < 1 << 63
    assert len(c.sha256) == 64 and c.sha256 == inspect_image(data).sha256


@pytest.mark.parametrize("size, reason", [((99, 300), "too_small"), ((120, 80), "too_small"),
                                          ((400, 120), "bad_aspect"), ((120, 400), "bad_aspect"),
                                          ((300, 100), None), ((100, 100), None)])
def test_image_size_and_aspect(size, reason):
    c = inspect_image(_encode(_photo(*size), "PNG"))
    assert c.reason == reason and (c.width, c.height) == size


def test_image_empty_and_unsupported():
    assert inspect_image(b"").reason == "empty"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200"><rect/></svg>'
    assert inspect_image(svg).reason == "unsupported_format"
    assert inspect_image(b"<html>404 Not Found</html>").reason == "unsupported_format"
    ico = _encode(_photo(128, 128), "ICO")  # Pillow reads ICO, but it is not accepted
    assert inspect_image(ico).reason == "unsupported_format"


def test_image_truncated():
    data = _encode(_photo(), "JPEG", quality=90)
    c = inspect_image(data[: len(data) // 2])
    assert c.reason == "decode_error" and (c.width, c.height) == (320, 240)
    assert inspect_image(_encode(_photo(), "PNG")[:-200]).reason == "decode_error"


def test_image_decompression_bomb():
    t0 = time.perf_counter()
    huge = inspect_image(_png_declaring(100_000, 100_000))  # above Pillow's own hard limit
    over = inspect_image(_png_declaring(10_000, 10_000))  # 1e8 > 89,478,485: our check
    assert time.perf_counter() - t0 < 1  # decided from the header, nothing decoded
    assert huge.reason == "decompression_bomb"
    assert over.reason == "decompression_bomb" and (over.width, over.height) == (10_000, 10_000)
    assert inspect_image(_encode(_photo(), "PNG"), max_pixels=1000).reason == "decompression_bomb"


def test_image_modes():
    photo = _photo()
    cmyk = inspect_image(_encode(photo.convert("CMYK"), "JPEG"))
    assert cmyk.reason is None and cmyk.format == "JPEG"
    a16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    png16 = _encode(Image.fromarray(a16), "PNG")
    assert Image.open(io.BytesIO(png16)).mode.startswith("I")
    c16 = inspect_image(png16)
    assert c16.reason is None
    c8 = inspect_image(_encode(photo.convert("L"), "PNG"))
    assert hamming(c16.phash, c8.phash) <= 4  # scaled to 8 bits, not clipped to white
    gif = inspect_image(_encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"))
    assert gif.reason is None and gif.format == "GIF"
    la = inspect_image(_encode(photo.convert("LA"), "PNG"))
    assert la.reason is None


def test_image_animated_gif_first_frame():
    frames = [_photo(), Image.new("RGB", (320, 240), "red"), Image.new("RGB", (320, 240), "blue")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    c = inspect_image(data)
    still = inspect_image(_encode(frames[0], "GIF"))
    assert c.reason is None and (c.width, c.height) == (320, 240)
    assert hamming(c.phash, still.phash) <= 4


def test_image_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode(_photo(320, 240), "JPEG", exif=exif)
    c = inspect_image(data)
    assert c.reason is None and (c.width, c.height) == (240, 320)
    upright = inspect_image(_encode(_photo(320, 240).transpose(Image.Transpose.ROTATE_270), "JPEG"))
    assert hamming(c.phash, upright.phash) <= 4
    # the aspect test uses the displayed orientation
    wide = _encode(_photo(350, 110), "JPEG", exif=exif)
    assert inspect_image(wide).reason == "bad_aspect"
    assert inspect_image(wide, max_aspect=4.0).height == 350


def test_image_phash_near_duplicates():
    import skimage.data
    photo = Image.fromarray(skimage.data.astronaut())
    a = inspect_image(_encode(photo, "PNG"))
    b = inspect_image(_encode(photo.resize((300, 300), Image.Resampling.LANCZOS), "JPEG", quality=80))
    other = inspect_image(_encode(Image.fromarray(skimage.data.coffee()), "PNG"))
    assert hamming(a.phash, b.phash) <= 4
    assert hamming(a.phash, other.phash) > 16


def test_hamming():
    assert hamming(0, 0) == 0 and hamming(0, -1) == 64 and hamming(-1, (1 << 64) - 1) == 0
    assert hamming(0b1011, 0b0001) == 2


_VALID = [_encode(_photo(160, 120), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]


@given(st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from(_VALID), st.integers(0, 5000), st.binary(max_size=64)).map(
        lambda t: t[0][: t[1]] + t[2]),  # a valid header, cut short, then junk
    st.tuples(st.sampled_from(_VALID), st.integers(0, 5000), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]),  # one corrupted byte
))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_inspect_image_never_raises(data):
    c = inspect_image(data)
    assert c.reason is None or c.reason in (
        "empty", "unsupported_format", "decompression_bomb", "too_small", "bad_aspect", "decode_error")
    assert (c.phash is None) == (c.reason is not None)
