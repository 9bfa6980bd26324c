"""A self-contained HTML page: inline CSS, figures as base64 PNG, no script. Every value that
comes from data goes through `esc`."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.92em}img.plot{max-width:100%}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em}.card img{max-width:100%;max-height:240px;display:block;margin:auto}
.card dt{font-weight:600;margin-top:.3em}.card dd{margin:0 0 0 .5em;overflow-wrap:anywhere}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_img(data: bytes, alt: str, css: str = "") -> str:
    """An <img> holding PNG or JPEG bytes inline."""
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    cls = f' class="{esc(css)}"' if css else ""
    return f'<img{cls} alt="{esc(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def figure(fig: Figure, alt: str) -> str:
    """A matplotlib figure as an inline PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return png_img(buf.getvalue(), alt, "plot")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table; numbers right-aligned, everything escaped."""
    def cell(v: Any) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f'<td class="n">{esc(f"{v:,}" if isinstance(v, int) else f"{v:.4g}")}</td>'
        return f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(ident: str, title: str, *parts: str) -> str:
    """A section; `parts` are HTML already (build them with the helpers above)."""
    return f'<section id="{esc(ident)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def page(title: str, intro: str, sections: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><h1>{esc(title)}</h1>{intro}{"".join(sections)}</body></html>\n')
