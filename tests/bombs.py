"""Small files that inflate, one per container format (generated, never stored).

Each holds a real image and a real page next to: a unit over the byte cap (an image member, a
ZIM entry, a WARC record, a parquet cell, a page body) that inflates to BIG bytes, and a unit
under the cap referenced REPEAT times. Read naively, each needs several GB; `read_all` under an
address-space limit shows the readers never inflate more than the caps.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

MIB = 1 << 20
BIG = 160 * MIB  # over the 64 MiB item cap and the 16 MiB page cap
SHARED = 40 * MIB  # under the cap, referenced REPEAT times
REPEAT = 200
TEXT = "The old lighthouse stands on a rocky island and guides the fishing boats home at night."


def photo() -> bytes:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((200, 150))
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    return buf.getvalue()


def _page(srcs: list[str]) -> bytes:
    imgs = "".join(f'<img src="{s}">' for s in srcs)
    return f"<html><body><p>{TEXT}</p>{imgs}</body></html>".encode()


def epub(dest: Path) -> Path:
    """A zip with a BIG zero member, a SHARED one referenced REPEAT times, and a zero page body."""
    xhtml = ('<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body><p>' + TEXT + "</p>"
             + '<img src="ok.jpg"/><img src="big.jpg"/>' + '<img src="shared.jpg"/>' * REPEAT + "</body></html>")
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"><manifest>'
           '<item id="a" href="a.xhtml" media-type="application/xhtml+xml"/>'
           '<item id="z" href="zero.xhtml" media-type="application/xhtml+xml"/></manifest>'
           '<spine>' + '<itemref idref="a"/><itemref idref="z"/>' * 50 + '</spine></package>')
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mimetype", "application/epub+zip", zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml", '<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:'
                   'opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/b.opf"/></rootfiles></container>')
        z.writestr("OEBPS/b.opf", opf)
        z.writestr("OEBPS/a.xhtml", xhtml)
        z.writestr("OEBPS/ok.jpg", photo())
        z.writestr("OEBPS/big.jpg", b"\0" * BIG, compresslevel=9)
        z.writestr("OEBPS/shared.jpg", b"\xff\xd8\xff" + b"\0" * SHARED, compresslevel=9)
        z.writestr("OEBPS/zero.xhtml", b"<p>" + b" " * BIG + b"</p>", compresslevel=9)
    return dest


def parquet(dest: Path) -> Path:
    """One row group per row, dictionary-encoded: a SHARED image in REPEAT cells; an image cell
    over the cap (read, never converted); a BIG image and a BIG text (row groups refused)."""
    shared = b"\xff\xd8\xff" + b"\0" * SHARED
    rows = [([TEXT, None] + [None] * REPEAT, [None, photo()] + [shared] * REPEAT), ([TEXT, None], [None, b"\0" * (100 * MIB)]),
            ([TEXT, None], [None, b"\0" * BIG]), ([" " * BIG, None], [None, None])]
    schema = pa.schema([("url", pa.string()), ("texts", pa.list_(pa.dictionary(pa.int32(), pa.string()))),
                        ("images", pa.list_(pa.dictionary(pa.int32(), pa.binary())))])
    with pq.ParquetWriter(dest, schema, compression="zstd", use_dictionary=True) as w:
        for n, (texts, images) in enumerate(rows):  # one row group each, with its own dictionary
            w.write_table(pa.table({"url": [f"http://a/{n}"], "texts": pa.array([texts], schema.field("texts").type),
                                    "images": pa.array([images], schema.field("images").type)}, schema=schema))
    return dest


def warc(dest: Path) -> Path:
    """Records whose HTTP bodies are gzip bombs (Content-Encoding: gzip): a page and an image."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with dest.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)

        def add(url: str, ctype: str, body: bytes, encoded: bool = False) -> None:
            headers = [("Content-Type", ctype)] + ([("Content-Encoding", "gzip")] if encoded else [])
            payload = gzip.compress(body, 9) if encoded else body
            http = StatusAndHeaders("200 OK", headers + [("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http))

        add("http://x/", "text/html", _page(["/ok.jpg", "/big.jpg"] + ["/shared.jpg"] * REPEAT))
        add("http://x/ok.jpg", "image/jpeg", photo())
        add("http://x/big.jpg", "image/jpeg", b"\0" * BIG, encoded=True)
        add("http://x/shared.jpg", "image/jpeg", b"\xff\xd8\xff" + b"\0" * SHARED, encoded=True)
        add("http://x/zero", "text/html", b"<p>" + b" " * BIG + b"</p>", encoded=True)
    return dest


def zim(dest: Path) -> Path:
    """A ZIM whose compressed cluster holds a BIG entry and a SHARED one referenced REPEAT times."""
    from libzim.writer import Creator, Hint, Item, StringProvider

    class _Item(Item):
        def __init__(self, path: str, mime: str, data: bytes):
            super().__init__()
            self.p, self.m, self.d = path, mime, data

        def get_path(self): return self.p
        def get_title(self): return self.p
        def get_mimetype(self): return self.m
        def get_contentprovider(self): return StringProvider(self.d)
        def get_hints(self): return {Hint.FRONT_ARTICLE: self.m == "text/html", Hint.COMPRESS: True}

    with Creator(str(dest)).config_indexing(False, "eng") as c:
        c.set_mainpath("a.html")
        c.add_item(_Item("a.html", "text/html", _page(["ok.jpg", "big.jpg"] + ["shared.jpg"] * REPEAT)))
        c.add_item(_Item("ok.jpg", "image/jpeg", photo()))
        c.add_item(_Item("big.jpg", "image/jpeg", b"\0" * BIG))
        c.add_item(_Item("shared.jpg", "image/jpeg", b"\xff\xd8\xff" + b"\0" * SHARED))
        c.add_item(_Item("zero.html", "text/html", b"<p>" + b" " * BIG + b"</p>"))
    return dest


def mmc4(dest: Path) -> Path:
    """A `.jsonl.gz` whose middle line inflates to BIG bytes (over the 64 MiB line cap)."""
    doc = {"url": "http://a/1", "text_list": [TEXT], "image_info": [{"raw_url": "http://a/1.jpg", "matched_text_index": 0}]}
    with gzip.open(dest, "wb", compresslevel=9) as fh:
        fh.write(json.dumps(doc).encode() + b"\n")
        fh.write(b'{"url": "http://a/2", "text_list": ["' + b" " * BIG + b'"]}\n')
        fh.write(json.dumps({**doc, "url": "http://a/3"}).encode() + b"\n")
    return dest


BUILDERS = {"epub": (epub, "b.epub"), "parquet": (parquet, "b.parquet"), "warc": (warc, "b.warc.gz"),
            "zim": (zim, "b.zim"), "mmc4": (mmc4, "b.jsonl.gz")}


def read_all(path: str, limit_mib: int) -> None:
    """In a fresh process: cap the address space, read and extract every document, print JSON."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_mib * MIB, limit_mib * MIB))
    from realsyn.config import ExtractConfig
    from realsyn.extract.records import extract_documents
    from realsyn.io.readers import read_documents
    from realsyn.io.readers.base import SKIPPED

    cfg = ExtractConfig(sentences={"perplexity": False})
    reasons: dict[str, int] = {}
    for doc in read_documents(Path(path)):
        rows = extract_documents([doc], cfg)
        for r in rows.images["reason"]:
            reasons[str(r)] = reasons.get(str(r), 0) + 1
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
    print(json.dumps({"reasons": reasons, "skipped": dict(SKIPPED), "peak_rss_mib": peak}))


if __name__ == "__main__":
    read_all(sys.argv[1], int(sys.argv[2]))
