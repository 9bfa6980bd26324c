"""Captions and alt texts as a page gives them, and URLs matched in one spelling (pure logic)."""

from __future__ import annotations

from realsyn.config import ExtractConfig
from realsyn.extract.records import extract_documents
from realsyn.io.documents import Document, Item
from realsyn.io.policy import ReadPolicy
from realsyn.io.readers.base import canonical_url
from realsyn.io.readers.html import html_to_items, page_items, placeholder_alt, split_chapters


def _images(html: str) -> list[Item]:
    return [i for i in html_to_items(html.encode(), lambda src: Item("image", url=src))[1] if i.kind == "image"]


def test_table_cell_captions_follow_their_column():
    page = """<table><tr><td><img src="a.png" alt="see caption"></td><td><img src="b.png"></td></tr>
    <tr><td class="caption">Fig. 19. Flaked celt of dark tufa.</td><td>Fig. 20. A polished axe.</td></tr></table>
    <table><tr><td><img src="c.png"></td><td><img src="d.png"></td></tr>
    <tr><td colspan="2" class="caption">Fig. 45. Fundamental forms of vases.</td></tr></table>"""
    got = [(i.url, i.caption, i.alt) for i in _images(page)]
    assert got == [("a.png", "Fig. 19. Flaked celt of dark tufa.", None), ("b.png", "Fig. 20. A polished axe.", None),
                   ("c.png", "Fig. 45. Fundamental forms of vases.", None), ("d.png", "Fig. 45. Fundamental forms of vases.", None)]
    texts = [i.text for i in html_to_items(page.encode(), lambda s: Item("image", url=s))[1] if i.kind == "text"]
    assert texts == []  # a caption is not prose


def test_caption_paragraphs_and_multi_image_boxes():
    page = """<p class="illustration"><img src="a.png"></p><p class="caption">Fig. 1. Section of oval grave.</p>
    <p>Fig. 32 is reproduced from Bollaert and is very elaborately worked by the smiths.</p>
    <p><img src="b.png"></p><p>Plate IV. The harbour at dawn.</p>
    <div class="thumb tmulti"><div class="thumbinner">
      <div class="tsingle"><img src="c.png"><div class="thumbcaption">Left image</div></div>
      <div class="tsingle"><img src="d.png"><div class="thumbcaption">Right image</div></div></div></div>"""
    items = html_to_items(page.encode(), lambda s: Item("image", url=s))[1]
    caps = {i.url: i.caption for i in items if i.kind == "image"}
    assert caps == {"a.png": "Fig. 1. Section of oval grave.", "b.png": "Plate IV. The harbour at dawn.",
                    "c.png": "Left image", "d.png": "Right image"}
    assert [i.text for i in items if i.kind == "text"] == [
        "Fig. 32 is reproduced from Bollaert and is very elaborately worked by the smiths."]


def test_multi_image_table_box_gives_each_image_its_column_caption():
    """The 2015 MediaWiki layout of a multi-image box (the Mona Lisa article): images in one table
    row, `thumbcaption` divs in the row below, one per column."""
    page = """<div class="thumb tright"><div class="thumbinner"><table>
    <tr><td class="thumbimage"><img src="sapeck.jpg" alt=""></td><td></td><td class="thumbimage"><img src="lhooq.jpg"></td></tr>
    <tr><td><div class="thumbcaption"><i>Le rire</i> by Sapeck (1883)</div></td><td></td>
        <td><div class="thumbcaption"><i>L.H.O.O.Q.</i> by Marcel Duchamp (1919)</div></td></tr></table></div></div>"""
    assert [(i.url, i.caption) for i in _images(page)] == [
        ("sapeck.jpg", "Le rire by Sapeck (1883)"), ("lhooq.jpg", "L.H.O.O.Q. by Marcel Duchamp (1919)")]


def test_placeholder_alts():
    for alt in ("see caption", "See adjacent text.", "titlepage (155K)", "IMG_1234.JPG", "logo", "[image]"):
        assert placeholder_alt(alt), alt
    for alt in ("Mona Lisa, by Leonardo da Vinci", "A red tram on a bridge"):
        assert not placeholder_alt(alt), alt


def test_captions_and_alt_enter_the_pool_under_caption_filters():
    doc = Document("d", "s", [Item("text", text="The old lighthouse stands on a rocky island and guides the boats."),
                              Item("image", data=b"x", caption="Fig. 3. Vacant wall in the Salon Carr\u00e9, Louvre",
                                   alt="Photo credit: Getty Images"),
                              Item("image", data=b"y", caption="Click here to enlarge")])
    rows = extract_documents([doc], ExtractConfig(sentences={"perplexity": False}))
    s = rows.sentences
    got = [(k, t, r) for k, t, r in zip(s["kind"], s["text"], s["reason"])]
    assert got[1:] == [("caption", "Vacant wall in the Salon Carr\u00e9, Louvre", None),  # no verb: CAT would reject it
                       ("alt", "Photo credit: Getty Images", "boilerplate"),
                       ("caption", "Click here to enlarge", "boilerplate")]


def test_urls_match_in_one_spelling_and_base_href():
    assert canonical_url("HTTP://Upload.Wikimedia.org:80/a/Mona_Lisa%2C_by.jpg#x") == \
        canonical_url("http://upload.wikimedia.org/a/Mona_Lisa,_by.jpg")
    page = b'<html><head><base href="http://cdn.example.org/m/"></head><body><img src="a.jpg"></body></html>'
    (img,) = page_items(page, lambda s: Item("image", url=s), ReadPolicy(), web=True)[1]
    assert img.url == "http://cdn.example.org/m/a.jpg"


def test_books_split_into_chapters():
    chapter = "<h4>Chapter</h4>" + "<p>" + "A sentence of the book that goes on. " * 200 + "</p>"
    items = page_items((chapter * 4).encode(), lambda s: None, ReadPolicy(), chapters=True)[1]
    assert len(split_chapters(items)) == 4
    short = page_items(b"<h4>A</h4><p>Short.</p><h4>B</h4><p>Page.</p>", lambda s: None, ReadPolicy(), chapters=True)[1]
    assert len(split_chapters(short)) == 1
