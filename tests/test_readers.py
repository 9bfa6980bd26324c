"""Document readers: real shared data (ZIM, MMC4, WARC, EPUB) plus small inputs built in tmp_path."""

from __future__ import annotations

import gzip
import io
import json
import logging
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realsyn.io.documents import Item
from realsyn.io.readers import READERS, InputError, detect, read_documents
from realsyn.io.readers.base import SKIPPED
from realsyn.io.readers.html import html_to_items

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZIM = DATA / "wiki-raycharles" / "wikipedia_en_ray_charles_2015-06.zim"
MMC4 = DATA / "mmc4" / "docs_shard_151_partial.jsonl"
WARC = DATA / "warc" / "iana.warc.gz"
EPUBS = DATA / "epub3" / "30"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0fake-jpeg"

real = pytest.mark.skipif(not DATA.exists(), reason=f"shared test data not found at {DATA}")


def images(docs):
    return [i for d in docs for i in d.items if i.kind == "image"]


def texts(docs):
    return [i.text for d in docs for i in d.items if i.kind == "text"]


def url_item(src: str) -> Item:
    return Item("image", url=src)


# --- real data ---------------------------------------------------------------------------------

@real
def test_zim_articles_images_captions_and_stable_ids():
    docs = list(read_documents(ZIM))
    assert len(docs) == 85
    assert len({d.doc_id for d in docs}) == 85
    assert [(d.doc_id, d.source, d.items) for d in docs] == [(d.doc_id, d.source, d.items) for d in read_documents(ZIM)]
    imgs = images(docs)
    assert len({i.data for i in imgs if i.data}) >= 90
    assert all(i.data or i.error == "missing" for i in imgs)
    captions = {i.caption for i in imgs if i.caption}
    assert len([i for i in imgs if i.caption]) >= 20
    assert not captions & set(texts(docs))  # captions are image metadata, never text items
    ray = next(d for d in docs if d.source == "A/Ray_Charles.html")
    assert ray.title == "Ray Charles"
    assert any(i.caption == "Ray Charles statue in Greenville, Florida" and i.data for i in ray.items)
    assert not any("[13]" in t for t in texts([ray]))  # citation markers dropped


@real
def test_mmc4_sentences_and_images_in_place():
    docs = list(read_documents(MMC4))
    assert len(docs) == 107 and len({d.doc_id for d in docs}) == 107
    assert len(texts(docs)) == 2072
    imgs = images(docs)
    assert len(imgs) == 417 and all(i.data is None and i.url.startswith("http") for i in imgs)
    raw = json.loads(MMC4.open().readline())
    first = docs[0].items
    for info in raw["image_info"]:  # each image comes right after its matched sentence (or another image)
        pos = next(k for k, i in enumerate(first) if i.url == info["raw_url"])
        prev = next(i for i in reversed(first[:pos]) if i.kind == "text")
        assert prev.text == " ".join(raw["text_list"][info["matched_text_index"]].split())
    assert docs[0].source == raw["url"]


@real
def test_warc_html_responses_with_archived_images():
    docs = list(read_documents(WARC))
    assert len(docs) == 16  # 20 HTML responses, 4 of them redirects (302)
    assert len({d.doc_id for d in docs}) == 16 and all(d.source.startswith("http") for d in docs)
    numbers = next(d for d in docs if d.source == "http://www.iana.org/numbers")
    (rir,) = images([numbers])  # header logo and footer logo are skipped with their header/footer
    assert rir.url == "http://www.iana.org/_img/2013.1/rir-map.svg" and b"<svg" in rir.data and rir.alt == "Map of RIRs"
    home = texts([docs[0]])
    assert "IANA is the central repository for protocol name and number registries used in many Internet protocols." in home
    assert not any("global coordination" in t for t in home)  # the intro sits in <header>: skipped


@real
def test_epub_folders_figures_captions_alt():
    cole, gallery, wcag = (list(read_documents(EPUBS / n)) for n in
                           ("cole-voyage-of-life-tol", "figure-gallery-bindings", "WCAG"))
    for docs in (cole, gallery, wcag):
        assert len(docs) >= 1 and len({d.doc_id for d in docs}) == len(docs)  # one document per chapter
        imgs = images(docs)
        assert all(i.data for i in imgs)
        assert not {i.caption for i in imgs} & set(texts(docs))
    assert cole[0].title == "Thomas Cole - The Voyage of Life"
    assert len([i for i in images(cole) if i.caption and i.alt]) == 4
    assert any(i.caption.startswith("In the first painting, Childhood") for i in images(cole) if i.caption)
    assert len({i.caption for i in images(gallery) if i.caption}) == 8
    assert images(gallery)[0].caption.startswith("New Moon By the modern definition")
    assert len({i.caption for i in images(wcag) if i.caption}) >= 20  # first rendition only (20 figcaptions)
    assert sum(1 for i in images(wcag) if i.alt) == 33


@real
def test_epub_zip_equals_folder(tmp_path):
    folder = EPUBS / "cole-voyage-of-life-tol"
    book = tmp_path / "cole-voyage-of-life-tol.epub"
    with zipfile.ZipFile(book, "w") as zf:
        zf.write(folder / "mimetype", "mimetype", compress_type=zipfile.ZIP_STORED)
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.name != "mimetype":
                zf.write(f, f.relative_to(folder).as_posix(), compress_type=zipfile.ZIP_DEFLATED)
    assert detect(book) == detect(folder) == "epub"
    assert list(read_documents(book)) == list(read_documents(folder))


# --- formats built in tmp_path ------------------------------------------------------------------

def _zim(path: Path) -> None:
    from libzim.writer import Creator, Hint, StringProvider
    from libzim.writer import Item as ZimItem

    class Entry(ZimItem):
        def __init__(self, path: str, mime: str, content: bytes) -> None:
            super().__init__()
            self.p, self.m, self.c = path, mime, content

        def get_path(self): return self.p
        def get_title(self): return self.p
        def get_mimetype(self): return self.m
        def get_contentprovider(self): return StringProvider(self.c)
        def get_hints(self): return {Hint.FRONT_ARTICLE: self.m == "text/html"}

    with Creator(str(path)).config_indexing(False, "eng") as c:
        c.set_mainpath("wiki/Home")
        c.add_item(Entry("wiki/Home", "text/html", b'<html><body><p>Hello there.</p>'
                         b'<figure><img src="../img/a.png" alt="A"><figcaption>An A</figcaption></figure>'
                         b'<img src="../img/none.png"></body></html>'))
        c.add_item(Entry("img/a.png", "image/png", PNG))
        c.add_redirection("wiki/Alias", "Alias", "wiki/Home", {Hint.FRONT_ARTICLE: True})


def test_zim_new_namespace_scheme(tmp_path):
    _zim(tmp_path / "new.zim")
    (doc,) = read_documents(tmp_path / "new.zim")  # the redirect and the image are not documents
    assert doc.source == "wiki/Home"
    assert [i.kind for i in doc.items] == ["text", "image", "image"]
    assert doc.items[1].data == PNG and doc.items[1].caption == "An A" and doc.items[1].alt == "A"
    assert doc.items[2].data is None and doc.items[2].error == "missing"


def test_mmc4_gzip_bomb_line_is_skipped_without_holding_it(tmp_path, monkeypatch):
    """A line that decompresses to far more than MAX_LINE_BYTES (here 1 MiB, the bomb 48 MiB of
    zeros from a 48 KB gzip) is skipped and counted; the lines around it are read."""
    from realsyn.io.readers import base, mmc4

    monkeypatch.setattr(mmc4, "MAX_LINE_BYTES", 1 << 20)
    good = [json.dumps({"url": f"http://a/{k}", "text_list": [f"Line {k}."], "image_info": []}).encode() for k in (1, 2)]
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(good[0] + b"\n" + b'{"text_list": ["')
        for _ in range(48):
            fh.write(b"0" * (1 << 20))
        fh.write(b'"]}\n' + good[1] + b"\n")
    before = base.SKIPPED["oversized_line"]
    assert [d.source for d in read_documents(bomb)] == ["http://a/1", "http://a/2"]
    assert base.SKIPPED["oversized_line"] == before + 1


def test_mmc4_gzip_malformed_lines_and_truncation(tmp_path, caplog):
    lines = [json.dumps({"url": "http://a/1", "text_list": ["One.", "Two."],
                         "image_info": [{"raw_url": "http://a/x.jpg", "matched_text_index": 0}]}),
             "{not json", "[1, 2]", "",
             json.dumps({"text_list": ["No url."], "image_info": [{"raw_url": "http://a/y.jpg", "matched_text_index": 9}]}),
             json.dumps({"url": "http://a/1", "text_list": ["Repeat."], "image_info": []})]
    body = ("\n".join(lines) + "\n").encode()
    plain = tmp_path / "d.jsonl"
    plain.write_bytes(body)
    with caplog.at_level(logging.WARNING):
        docs = list(read_documents(plain))
    assert [d.source for d in docs] == ["http://a/1", f"byte {body.index(lines[4].encode())}"]  # no url: its offset
    assert [(i.kind, i.text or i.url) for i in docs[0].items] == [("text", "One."), ("image", "http://a/x.jpg"),
                                                                  ("text", "Two.")]
    assert docs[1].items[-1].url == "http://a/y.jpg"  # out-of-range match: appended at the end
    assert f"byte {body.index(b'{not json')}" in caplog.text and "malformed" in caplog.text
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(body))
    assert [(d.source, d.items) for d in read_documents(gz)] == [(d.source, d.items) for d in docs]
    many = "".join(json.dumps({"url": f"http://b/{k}", "text_list": [f"Sentence {k ** 3}."], "image_info": []}) + "\n"
                   for k in range(2000)).encode()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(many)[:-2000])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert 0 < len(list(read_documents(cut))) < 2000
    assert "truncated" in caplog.text
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError):
        list(read_documents(tmp_path / "bad.jsonl.gz"))


def test_obelics_image_kinds(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "rel.png").write_bytes(PNG)
    absolute = tmp_path / "abs.jpg"
    absolute.write_bytes(JPEG)
    rows = {
        "texts": [["Intro text.", None, None, None, None, None, None, "End."], [None, "Second doc."]],
        "images": [[None, "https://example.com/a.jpg", "imgs/rel.png", str(absolute), "imgs/gone.png",
                    "data:image/png;base64,iVBORw0KGgo=", "file://" + str(absolute), None],
                   ["https://example.com/b.jpg", None]],
        "metadata": [json.dumps([None, {"alt_text": " A  cat "}] + [None] * 6), None],
        "general_metadata": [json.dumps({"url": "https://example.com/page"}), None],
    }
    pq.write_table(pa.table(rows), tmp_path / "o.parquet")
    docs = list(read_documents(tmp_path / "o.parquet"))
    assert [d.source for d in docs] == ["https://example.com/page", "row 1"]
    a = docs[0].items
    assert a[0].text == "Intro text." and a[-1].text == "End."
    assert (a[1].url, a[1].data, a[1].alt) == ("https://example.com/a.jpg", None, "A cat")
    assert a[2].data == PNG and a[3].data == JPEG and a[6].data == JPEG
    assert a[4].data is None and a[4].error == "missing"
    assert a[5].data == b"\x89PNG\r\n\x1a\n"
    assert [i.kind for i in docs[1].items] == ["image", "text"]

    structs = pa.array([[None, {"bytes": PNG, "path": None}, {"bytes": None, "path": "imgs/rel.png"},
                         {"bytes": None, "path": "nope.png"}]],
                       type=pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
    raw = pa.array([[None, None, None, JPEG]], type=pa.list_(pa.binary()))
    pq.write_table(pa.table({"url": ["u1"], "texts": [["T", None, None, None]], "images": structs}),
                   tmp_path / "s.parquet")
    pq.write_table(pa.table({"texts": [["T", None, None, None]], "images": raw}), tmp_path / "b.parquet")
    (s,) = read_documents(tmp_path / "s.parquet")
    assert s.source == "u1" and [i.data for i in s.items[1:3]] == [PNG, PNG] and s.items[3].error == "missing"
    (b,) = read_documents(tmp_path / "b.parquet")
    assert b.items[-1].data == JPEG
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    for bad in ("other.parquet", "junk.parquet"):
        with pytest.raises(InputError):
            list(read_documents(tmp_path / bad))


def _warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    def response(w, url, ctype, body, status="200 OK"):
        headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))

    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        page = ('<html><head><title>Page</title></head><body><p>Caf\u00e9 text.</p>'
                '<img src="/logo.png" alt="Logo"><img src="http://cdn.example.org/x.jpg"></body></html>')
        response(w, "http://example.org/dir/page", "text/html; charset=iso-8859-1", page.encode("latin-1"))
        response(w, "http://example.org/logo.png", "image/png", PNG)
        response(w, "http://example.org/gone", "text/html", b"<p>Not found</p>", "404 Not Found")
        response(w, "http://example.org/dir/page", "text/html", b"<p>second capture</p>")
        w.write_record(w.create_revisit_record("http://example.org/logo.png", "sha1:AAAA",
                                               "http://example.org/logo.png", "2014-01-01T00:00:00Z"))


def test_warc_png_resolved_from_archive(tmp_path):
    _warc(tmp_path / "s.warc.gz")
    (doc,) = read_documents(tmp_path / "s.warc.gz")  # 404, repeated capture and revisit are ignored
    assert doc.title == "Page" and doc.items[0].text == "Caf\u00e9 text."
    logo, remote = doc.items[1:]
    assert (logo.data, logo.url, logo.alt) == (PNG, "http://example.org/logo.png", None)  # "Logo": a placeholder alt
    assert (remote.data, remote.url) == (None, "http://cdn.example.org/x.jpg")
    (tmp_path / "junk.warc").write_bytes(b"this is not a warc\n" * 10)
    with pytest.raises(InputError):
        list(read_documents(tmp_path / "junk.warc"))


def test_htmldir_relative_missing_and_broken_files(tmp_path):
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    (site / "sub").mkdir()
    (site / "img" / "x.png").write_bytes(PNG)
    (site / "sub" / "b.htm").write_text('<p>B.</p><img src="../img/x.png"><img src="/img/x.png">'
                                        '<img src="../../outside.png"><img src="pic%20one.png">')
    (site / "sub" / "pic one.png").write_bytes(PNG)
    (site / "a.html").write_text('<html><head><title>A</title></head><body><p>First para.</p>'
                                 '<img src="img/x.png" alt="x"><img src="img/missing.png">'
                                 '<img src="https://example.com/r.jpg"><img src="mailto:x@y"></body></html>')
    latin = '<html><head><meta charset="windows-1252"></head><body><p>\u00c9t\u00e9 \u2014 na\u00efve \u20ac</p></body></html>'
    (site / "c.html").write_bytes(latin.encode("cp1252"))
    (site / "d.html").write_bytes(bytes(range(256)) * 64)  # binary junk
    (site / "e.html").write_bytes(b"<html><body>" + b"<div>" * 100_000 + b"<p>deep</p>" + b"</div>" * 100_000
                                  + b"<p>after</p></body></html>")
    (site / "notes.txt").write_text("ignored")
    assert detect(site) == "htmldir"
    before = SKIPPED["undecodable_page"]
    docs = list(read_documents(site))
    assert [d.source for d in docs] == ["a.html", "c.html", "e.html", "sub/b.htm"]  # d.html: binary junk
    assert SKIPPED["undecodable_page"] == before + 1
    a, c, e, b = docs
    assert a.title == "A" and a.items[0].text == "First para."
    x, missing, remote = a.items[1:]
    assert (x.data, x.alt) == (PNG, "x") and (missing.data, missing.error) == (None, "missing")
    assert (remote.url, remote.data) == ("https://example.com/r.jpg", None)
    assert [i.data for i in b.items[1:]] == [PNG, PNG, None, PNG] and b.items[3].error == "outside_input"
    assert c.items[0].text == "\u00c9t\u00e9 \u2014 na\u00efve \u20ac"
    assert texts([e]) == ["deep", "after"]
    assert [x.doc_id for x in docs] == [x.doc_id for x in read_documents(site)]


def test_html_to_items_rules():
    page = b"""<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>T</title><script src="a.js"/></head><body>
<nav><p>Menu</p></nav><h1>Heading</h1><a id="top"/>
<p>One <b>two</b><br/>three<img src="i.png" alt=" an  image "/> four<sup id="cite_ref-1">[1]</sup>.</p>
<ul><li>outer<ul><li>inner</li></ul>tail</li></ul>
<figure><img src="data:image/png;base64,iVBORw0KGgo="/><figcaption><h2>Cap</h2><p>More.</p></figcaption></figure>
<div class="thumbinner"><img src="t.png"/><div class="thumbcaption">Thumb caption</div></div>
<div class="navbox"><p>nav text</p></div><p style="display: none">hidden</p><table><tr><td>cell</td></tr></table>
<blockquote>Quoted words.</blockquote><footer><p>Footer</p></footer></body></html>"""
    title, items = html_to_items(page, url_item)
    assert title == "T"
    assert [(i.kind, i.text or i.url or i.data) for i in items] == [
        ("text", "One two three four."), ("image", "i.png"), ("text", "outer"), ("text", "inner"), ("text", "tail"),
        ("image", b"\x89PNG\r\n\x1a\n"), ("image", "t.png"), ("text", "Quoted words.")]
    assert items[1].alt == "an image" and items[5].caption == "Cap More." and items[6].caption == "Thumb caption"
    for junk in (b"", b"\x00\x01\x02" * 1000, b"<", "<p>\u00e9</p>".encode("utf-16")):
        html_to_items(junk, url_item)  # never raises


def test_detect_and_errors(tmp_path):
    for name, fmt in [("a.zim", "zim"), ("a.jsonl", "mmc4"), ("a.JSONL.GZ", "mmc4"), ("a.parquet", "obelics"),
                      ("a.warc", "warc"), ("a.warc.gz", "warc"), ("a.epub", "epub")]:
        (tmp_path / name).write_bytes(b"")
        assert detect(tmp_path / name) == fmt and fmt in READERS
    (tmp_path / "book" / "META-INF").mkdir(parents=True)
    (tmp_path / "book" / "META-INF" / "container.xml").write_text("<container/>")
    assert detect(tmp_path / "book") == "epub"
    with pytest.raises(InputError, match="rootfile"):
        list(read_documents(tmp_path / "book"))
    (tmp_path / "empty").mkdir()
    for bad in ("x.txt", "empty", "nope.zim"):
        if bad == "x.txt":
            (tmp_path / bad).write_text("x")
        with pytest.raises(InputError, match="supported") as err:
            read_documents(tmp_path / bad)
        assert str(tmp_path / bad) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "bad.zim").write_bytes(b"garbage" * 100)
    (tmp_path / "bad.epub").write_bytes(b"garbage")
    for bad in ("bad.zim", "bad.epub"):
        with pytest.raises(InputError, match="cannot open"):
            list(read_documents(tmp_path / bad))
