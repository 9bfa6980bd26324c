"""HTML/XHTML page -> (title, items): the one place where markup becomes text and image items.

Text items come from the prose blocks `p`, `li`, `dd` and `blockquote` (a block nested in another
starts a new item; inline markup such as links keeps its text; `br` is a space), whitespace-normalised,
empty ones dropped. Not text: headings, table cells (`td`/`th`), `caption`, `dt`, `pre`, `svg`, `math`,
text outside a prose block (bare `div` text), and figure captions (`figcaption`, MediaWiki
`thumbcaption` / `gallerytext`), which become the `caption` of their images instead.
Skipped with everything inside (no text, no images): `head`, `script`, `style`, `noscript`,
`template`, `nav`, `header`, `footer`, `iframe`, `select`, `button`, `textarea`; elements hidden by
`hidden`, `aria-hidden="true"` or `display:none`; roles navigation/banner/contentinfo/search;
MediaWiki navboxes, reference lists, citation markers, `#toc` and edit links.
Images (`img`, SVG `image`) are kept where they occur; one inside a prose block follows that
block's text item, so an inline image never cuts a paragraph in two.
The tree is walked iteratively (no recursion). libxml2 stops parsing at 2,048 levels of nesting;
such a page is parsed again without its layout tags (`div`, `span`, `table`, ...), and content
still nested deeper than the limit is lost (never a crash).
"""

from __future__ import annotations

import codecs
import re
from urllib.parse import urljoin

from lxml import etree

from realsyn.io.documents import Item
from realsyn.io.policy import ReadPolicy
from realsyn.io.readers.base import Resolver, data_uri_item, norm, skip

_SKIP_TAGS = frozenset("head script style noscript template nav header footer iframe select button textarea "
                       "figcaption".split())
_SKIP_CLASSES = frozenset("navbox vertical-navbox reflist references reference toc mw-editsection magnify hidden "
                          "thumbcaption gallerytext".split())
_SKIP_ROLES = frozenset("navigation banner contentinfo search".split())
_TEXT_TAGS = frozenset("p li dd blockquote".split())
_NO_TEXT_TAGS = frozenset("h1 h2 h3 h4 h5 h6 td th caption dt pre svg math".split())
_INLINE = frozenset("a abbr b bdi bdo big cite code data del dfn em font i img ins kbd mark q rp rt ruby s samp "
                    "small span strike strong sub sup time tt u var wbr".split())
_CAPTIONS = {"tsingle": "thumbcaption", "thumbinner": "thumbcaption", "gallerybox": "gallerytext"}  # MediaWiki
# container -> caption class; `tsingle` first: in a multi-image box each image has its own caption
_CAPTION_CLASSES = frozenset("caption wp-caption-text image-caption figure-caption img-caption photo-caption "
                             "imagecaption figcaption".split())
_CELL_CAPTIONS = _CAPTION_CLASSES | frozenset(_CAPTIONS.values())
FIGURE_LABEL = re.compile(r"^\s*(?:fig(?:ure)?|plate|illustration|abb(?:ildung)?|pl)\.?\s*(?:no\.?\s*)?"
                          r"(?:[0-9]+|[ivxlc]+)[a-z]?\s*[.:\u2013\u2014-]+\s*", re.I)
"""A figure label opening a caption: "Fig. 19.", "Figure 3:", "Plate IV." (stripped from pool text)."""
_PLACEHOLDER_ALT = re.compile(r"^(?:(?:see|refer to) (?:the )?(?:adjacent |accompanying )?(?:caption|text|description)\.?|image|img|photo|picture|icon|logo|thumbnail|illustration|figure|"
                              r"spacer|blank|null|none|untitled|\S+\.(?:jpe?g|png|gif|webp|svg|bmp|tiff?)|"
                              r".*\(\d+\s*[kKmM]b?\))$", re.I)
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_CHAPTER_TAGS = ("h1", "h2", "h3", "h4")
CHAPTER_MIN_CHARS = 20_000
"""A page with more text than this (a book, not an article) is split into documents at its
headings: the most frequent level among h1 to h4 (a book's chapter or section headings)."""

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))  # UTF-32 LE before UTF-16 LE
_DECLARED = (re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']?([\w.:-]+)", re.I),
             re.compile(rb"<meta[^>]*charset\s*=\s*[\"']?\s*([\w.:-]+)", re.I))
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LAYOUT_TAGS = re.compile(r"</?(?:div|span|section|article|main|aside|font|center|table|tbody|thead|tfoot|tr|td|th)"
                          r"(?:\s[^>]*)?/?>", re.I)


def placeholder_alt(alt: str | None) -> bool:
    """Whether an alt text says nothing of the image: "see caption", a file name, "logo",
    Project Gutenberg's "name (155K)"."""
    return not alt or bool(_PLACEHOLDER_ALT.match(alt.strip().strip("[]")))


def html_to_items(html: bytes, resolve: Resolver, encoding: str | None = None) -> tuple[str | None, list[Item]]:
    """Parse a page and return (title, items in reading order); never raises on bad input.

    `resolve(src)` turns an image reference into an image item (None drops it); `data:` URIs are
    decoded here. `encoding` is a transport-level charset (e.g. from an HTTP header), tried first.
    """
    root = parse_html(html, encoding)
    if root is None:
        return None, []
    return _title(root), _Walker(resolve).run(root)


def page_items(html: bytes, resolve: Resolver, policy: ReadPolicy, encoding: str | None = None,
               where: object = "", web: bool = False, chapters: bool = False) -> tuple[str | None, list[Item]] | None:
    """`html_to_items` for a page within `policy.max_document_bytes`; None (the page counted as a
    skipped document, reason `oversized_document` or `undecodable_page`) otherwise. With main
    content on (`policy.main_content_for(web)`), prose outside the page's main content is dropped."""
    if len(html) > policy.max_document_bytes:
        skip("oversized_document", "%s: skipping a page of %d bytes (extract.max_document_mib)", where, len(html))
        return None
    root = parse_html(html, encoding)
    if root is None:
        if html.strip() and decode_html(html[:65536], encoding) is None:
            skip("undecodable_page", "%s: skipping a page whose text encoding cannot be detected", where)
            return None
        return None, []
    if web and (base := _base_href(root)):
        page_resolve = resolve
        resolve = lambda src: page_resolve(urljoin(base, src.strip()))  # noqa: E731
    items = _Walker(resolve, chapters).run(root)
    return _title(root), main_content(root, items) if policy.main_content_for(web) else items


def _base_href(root: etree._Element) -> str | None:
    """The page's `<base href>` when it is an absolute http(s) URL (image URLs resolve against it)."""
    el = root.find(".//{*}base")
    href = (el.get("href") or "").strip() if el is not None else ""
    return href if href[:8].lower().startswith(("http://", "https://")) else None


def split_chapters(items: list[Item], min_chars: int = CHAPTER_MIN_CHARS) -> list[list[Item]]:
    """The items of a page split at its chapter headings (the `break-hN` markers of
    `page_items(chapters=True)`) when the page is a book (more than `min_chars` of text), else
    one list; markers removed, empty chapters dropped."""
    marks = [it.role for it in items if it.role and it.role.startswith("break-")]
    counts = [(marks.count(f"break-{h}"), -k, f"break-{h}") for k, h in enumerate(_CHAPTER_TAGS)]
    level = max(counts)[2]  # the most frequent heading level (the higher one on ties)
    parts: list[list[Item]] = [[]]
    for it in items:
        if it.role == level:
            parts.append([])
        elif not (it.role or "").startswith("break-"):
            parts[-1].append(it)
    if sum(len(it.text or "") for it in items) <= min_chars:
        return [[it for p in parts for it in p]]
    return [p for p in parts if p]


_WORD = re.compile(r"\w+")
_UI_TEXT = re.compile(r"\b(?:apply|remove|clear|reset)\b[^.]{0,60}\bfilters?\b|^\W*(?:skip|jump) to (?:main )?content|"
                      r"^\W*back to top\W*$|^\W*(?:read|show|load|see) (?:more|all)\W*$|\bcookies?\b|"
                      r"\btracks? (?:users?|visitors?)\b|\b(?:accept|reject) all\b", re.I)
"""Labels of page controls that main-content extraction may leave in (facets, skip links, cookie
banners), dropped from web pages."""


def main_content(root: etree._Element, items: list[Item]) -> list[Item]:
    """The items without the prose that trafilatura (the main-content extractor datatrove uses)
    leaves out of the page's main content: navigation, facets, footers. Images and captions stay
    where they are; a page trafilatura finds nothing in keeps everything."""
    import trafilatura

    try:
        main = trafilatura.extract(etree.tostring(root, encoding="unicode", method="html"), favor_recall=True,
                                   include_tables=True, include_comments=False, deduplicate=False)
    except Exception:  # noqa: BLE001 - an extractor failure costs the filter, never the page
        return items
    if not main:
        return items
    words = _WORD.findall(main.lower())
    body, grams = " ".join(words), set(zip(words, words[1:], words[2:]))

    def inside(text: str) -> bool:  # the two extractions differ in details (citation marks, spacing)
        w = _WORD.findall(text.lower())
        if len(w) < 4:
            return " ".join(w) in body
        own = list(zip(w, w[1:], w[2:]))
        return sum(g in grams for g in own) >= 0.5 * len(own)

    return [it for it in items if it.kind != "text" or it.role == "caption"
            or (inside(it.text or "") and not _UI_TEXT.search(it.text or ""))]


def _cp1252_fallback(err: UnicodeError) -> tuple[str | bytes, int]:
    """Decode error handler: a byte that is not valid UTF-8 is read as windows-1252 (pages that
    mix encodings, or whose declared UTF-8 is really Latin-1), so neither part turns to mojibake."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    bad = err.object[err.start:err.end]
    return bad.decode("cp1252", "replace"), err.end


codecs.register_error("realsyn-cp1252", _cp1252_fallback)


def decode_html(data: bytes, encoding: str | None = None) -> str | None:
    """Bytes -> text: BOM, then `encoding`, then `<?xml encoding>` / `<meta charset>`, else UTF-8.
    Invalid bytes in UTF-8 text (declared or not) are read as windows-1252 one
    by one. UTF-16/32 without a BOM is recognised by where its NUL bytes fall; stray NUL bytes in
    other text are dropped. None for binary data (mostly NUL or control bytes)."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(enc, "replace")
    head = data[:4096]
    if b"\x00" in head:
        if (wide := _bomless_wide(head)) is not None:
            return data.decode(wide, "replace")
        data = data.replace(b"\x00", b"")
        head = data[:4096]
        if not head or sum(b < 9 or 13 < b < 32 for b in head) > len(head) // 10:
            return None
    declared = [encoding] + [m.group(1).decode("ascii") for r in _DECLARED if (m := r.search(head))]
    for name in declared:
        codec = _codec(name)
        if codec:
            return data.decode(codec, "realsyn-cp1252" if codec == "utf-8" else "replace")
    return data.decode("utf-8", "realsyn-cp1252")  # pure windows-1252 comes out whole too


def _bomless_wide(head: bytes) -> str | None:
    """`utf-16-le/be` or `utf-32-le/be` when the NUL bytes of `head` fall where ASCII text in that
    encoding puts them (most code units are ASCII in markup), else None."""
    n = len(head) - len(head) % 4
    if n < 8:
        return None
    units = [head[i:n:4] for i in range(4)]
    zero = [u.count(0) / len(u) for u in units]
    if zero[1] > .9 and zero[2] > .9 and zero[3] > .9 and zero[0] < .5:
        return "utf-32-le"
    if zero[0] > .9 and zero[1] > .9 and zero[2] > .9 and zero[3] < .5:
        return "utf-32-be"
    odd, even = (zero[1] + zero[3]) / 2, (zero[0] + zero[2]) / 2
    if odd > .6 and even < .2:
        return "utf-16-le"
    if even > .6 and odd < .2:
        return "utf-16-be"
    return None


def _codec(name: str | None) -> str | None:
    """A Python codec for a declared charset, with the WHATWG substitutions; None if unknown."""
    try:
        codec = codecs.lookup(name.strip()).name if name else None
    except LookupError:
        return None
    if codec in ("ascii", "iso8859-1", "latin-1"):
        return "cp1252"
    return "utf-8" if codec and codec.startswith(("utf-16", "utf-32")) else codec


def parse_html(data: bytes, encoding: str | None = None) -> etree._Element | None:
    """The root element: strict XML first for XHTML (keeps `<a/>`-style tags right), else the
    forgiving HTML parser on the decoded text; None if nothing can be parsed."""
    head = data[:4096].removeprefix(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"<?xml") or b"http://www.w3.org/1999/xhtml" in head:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)
        try:
            root = etree.fromstring(data, parser)
            if _tag(root) == "html":
                return root
        except etree.XMLSyntaxError:
            pass
    text = decode_html(data, encoding)
    if not text:
        return None
    text = _CONTROL.sub("", text)
    root, too_deep = _parse_text(text)
    if too_deep:  # libxml2 stopped at its depth limit: parse again without the layout tags
        flat = _parse_text(_LAYOUT_TAGS.sub(" ", text))[0]
        root = root if flat is None else flat
    return root


def _parse_text(text: str) -> tuple[etree._Element | None, bool]:
    """(root, hit the depth limit) from the forgiving HTML parser."""
    parser = etree.HTMLParser(recover=True, no_network=True, remove_comments=True, remove_pis=True,
                              huge_tree=True, default_doctype=False)
    try:
        root = etree.fromstring(text, parser)
    except (etree.XMLSyntaxError, etree.ParserError, ValueError):
        return None, False
    return root, any("Excessive depth" in e.message for e in parser.error_log)


def _tag(el: etree._Element) -> str:
    """Lower-case local name; '' for comments, entities and processing instructions."""
    t = el.tag
    return t.rsplit("}", 1)[-1].lower() if isinstance(t, str) else ""


def _classes(el: etree._Element) -> set[str]:
    return set((el.get("class") or "").split()) if isinstance(el.tag, str) else set()


def _skipped(el: etree._Element, tag: str) -> bool:
    if tag in _SKIP_TAGS or not _SKIP_CLASSES.isdisjoint(_classes(el)):
        return True
    get = el.get
    eid = get("id") or ""
    if eid == "toc" or eid.startswith("cite_ref"):
        return True
    if get("hidden") is not None or get("aria-hidden") == "true" or get("role") in _SKIP_ROLES:
        return True
    style = get("style")
    return bool(style) and "display:none" in style.replace(" ", "").lower()


def _plain_text(root: etree._Element) -> str:
    """Normalised text of a subtree (a caption), with the same skip rules and block spacing."""
    out: list[str] = []
    walk = etree.iterwalk(root, events=("start", "end"))
    for event, el in walk:
        tag = _tag(el)
        if event == "start":
            if el is not root and tag and _skipped(el, tag):
                walk.skip_subtree()
                continue
            if tag not in _INLINE:
                out.append(" ")
            if tag and el.text:
                out.append(el.text)
        elif el is root:
            break
        else:
            if tag not in _INLINE:
                out.append(" ")
            if el.tail:
                out.append(el.tail)
    return norm("".join(out))


def _title(root: etree._Element) -> str | None:
    el = root.find("{*}head/{*}title")
    if el is None:
        el = root.find(".//{*}title")
    return (norm(el.text) or None) if el is not None else None


class _Walker:
    """One pass over the tree in document order, keeping a text buffer and the open prose blocks."""

    def __init__(self, resolve: Resolver, chapters: bool = False) -> None:
        self.resolve, self.chapters = resolve, chapters
        self.items: list[Item] = []
        self.buf: list[str] = []
        self.pending: list[Item] = []  # images met inside the open prose block
        self.modes: list[bool] = []  # innermost text/no-text element: collect text?
        self.open_blocks = 0
        self.captions: dict[etree._Element, str | None] = {}
        self.claimed: set[etree._Element] = set()

    def run(self, root: etree._Element) -> list[Item]:
        frames: list[tuple[str, bool]] = []  # (kind, is block) per open element
        walk = etree.iterwalk(root, events=("start", "end"))
        for event, el in walk:
            if event == "start":
                frames.append(self._start(el, _tag(el)))
                if frames[-1][0] == "skip":
                    walk.skip_subtree()
            else:
                self._end(el, *frames.pop())
        self._flush()
        return _attach_captions(self.items)

    def _collecting(self) -> bool:
        return bool(self.modes) and self.modes[-1]

    def _start(self, el: etree._Element, tag: str) -> tuple[str, bool]:
        if not tag:
            return "plain", False
        if _skipped(el, tag):
            return "skip", tag not in _INLINE
        kind = "plain"
        if tag in _TEXT_TAGS:
            self._flush()
            self.modes.append(True)
            self.open_blocks += 1
            kind = "text"
        elif tag in _NO_TEXT_TAGS:
            self.modes.append(False)
            kind = "notext"
        block = tag not in _INLINE
        if el in self.claimed:  # a table cell already given to its image as caption
            return "skip", block
        if tag not in ("figcaption", "img", "image") and not _CAPTION_CLASSES.isdisjoint(_classes(el)):
            self._flush()
            if text := _plain_text(el):
                self.items.append(Item("text", text=text, role="caption"))
            return "skip", block
        if self.chapters and tag in _CHAPTER_TAGS:
            self._flush()
            self.items.append(Item("text", role=f"break-{tag}"))
        if tag in ("img", "image"):
            self._image(el)
        elif self._collecting():
            self.buf.extend((" " if block else "", el.text or ""))
        return kind, block

    def _end(self, el: etree._Element, kind: str, block: bool) -> None:
        if kind == "text":
            self._flush()
            self.open_blocks -= 1
        if kind in ("text", "notext"):
            self.modes.pop()
        if self._collecting():
            self.buf.extend((" " if block else "", el.tail or ""))

    def _flush(self) -> None:
        text = norm("".join(self.buf))
        self.buf.clear()
        if text:
            self.items.append(Item("text", text=text))
        self.items.extend(self.pending)
        self.pending.clear()

    def _image(self, el: etree._Element) -> None:
        src = (el.get("src") or el.get("href") or el.get(_XLINK_HREF) or "").strip()
        if (not src or src[:5].lower() == "data:") and el.get("data-src"):
            src = el.get("data-src", "").strip()  # lazy loading: placeholder in src, image in data-src
        if not src:
            return
        item = data_uri_item(src) if src[:5].lower() == "data:" else self.resolve(src)
        if item is None:
            return
        alt = norm(el.get("alt")) or None
        item.alt = None if placeholder_alt(alt) else alt
        item.caption = self._caption(el)
        (self.pending if self.open_blocks else self.items).append(item)

    def _caption(self, el: etree._Element) -> str | None:
        """Caption of the nearest enclosing `figure` (its `figcaption`) or MediaWiki thumb/gallery box."""
        for anc in el.iterancestors():
            tag = _tag(anc)
            if tag in ("td", "th"):
                if (cap := self._cell_caption(anc)) is not None:
                    return cap
                continue
            if tag == "figure":
                find = (c for c in anc if _tag(c) == "figcaption")
            elif tag in ("div", "li") and (box := sorted(_CAPTIONS.keys() & _classes(anc))):
                find = (c for c in anc.iter() if _CAPTIONS[box[0]] in _classes(c))
            else:
                continue
            if anc not in self.captions:
                cap = next(find, None)
                self.captions[anc] = (_plain_text(cap) or None) if cap is not None else None
            return self.captions[anc]
        return None

    def _cell_caption(self, cell: etree._Element) -> str | None:
        """A table layout's caption of the image in `cell`: the cell below it (next two rows, same
        column) when it is marked `caption` or opens with a figure label ("Fig. 19.")."""
        row = cell.getparent()
        if row is None or _tag(row) != "tr":
            return None
        column = _columns(row)[cell]
        below = row.itersiblings()
        for other in (next(below, None), next(below, None)):
            if other is None or _tag(other) != "tr":
                return None
            target = next((c for c, (a, b) in _columns(other).items() if a <= column[0] < b), None)
            if target is not None and target.find(".//{*}img") is None:
                # the cell itself or an element in it (MediaWiki's multi-image box: a thumbcaption div)
                marked = next((c for c in target.iter() if _classes(c) & _CELL_CAPTIONS), None)
                text = _plain_text(marked if marked is not None else target)
                if text and (marked is not None or FIGURE_LABEL.match(text)):
                    self.claimed.add(target)  # its text is the caption, not prose (shared by a colspan)
                    return text
        return None


def _columns(row: etree._Element) -> dict[etree._Element, tuple[int, int]]:
    """Each cell of a table row -> its [first, last + 1) column, colspans counted."""
    out, at = {}, 0
    for c in row:
        if _tag(c) in ("td", "th"):
            try:
                span = max(1, min(1000, int(c.get("colspan") or 1)))
            except ValueError:
                span = 1
            out[c] = (at, at + span)
            at += span
    return out


def _attach_captions(items: list[Item]) -> list[Item]:
    """Give an image without caption the text right after it when that text is marked as a
    caption or opens with a figure label (a "Fig. 3." paragraph under the picture), or a marked
    caption right before it; such a text leaves the prose."""
    used: set[int] = set()
    for i, item in enumerate(items):
        if item.kind != "image" or item.caption:
            continue
        for j, strict in ((i + 1, False), (i - 1, True)):
            if not 0 <= j < len(items) or j in used or items[j].kind != "text":
                continue
            text = items[j].text or ""
            marked = items[j].role == "caption"
            if marked or (not strict and FIGURE_LABEL.match(text) and len(text.split()) <= 80):
                item.caption = text
                used.add(j)
                break
    return [it for k, it in enumerate(items) if k not in used]
