"""One self-contained HTML page: every figure and sample grid inlined as base64 PNG, tables as HTML.

The page carries a small script that, on load, records how many images decoded (non-zero ``naturalWidth``)
and how many table rows rendered into ``#render-check`` (``data-images-total``, ``data-images-ok``,
``data-table-rows``): the report test reads it back from headless Chromium's ``--dump-dom``."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0;max-width:380px}figcaption{font-size:12px;color:#555}.muted{color:#777;font-size:12px}
"""

CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = document.querySelectorAll('table.results tbody tr').length;
  var el = document.getElementById('render-check');
  el.setAttribute('data-images-total', String(imgs.length));
  el.setAttribute('data-images-ok', String(ok));
  el.setAttribute('data-table-rows', String(rows));
  el.textContent = 'images ' + ok + '/' + imgs.length + ', table rows ' + rows;
});
"""


def img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return '<p class="muted">(no rows)</p>'
    return df.to_html(index=False, classes="results", border=0, escape=True, na_rep="–")


def page(title: str, sections: list[tuple[str, list[str]]], meta_lines: list[str]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="muted">{html.escape(m)}</p>' for m in meta_lines]
    for head, parts in sections:
        body.append(f"<h2>{html.escape(head)}</h2>")
        body += parts
    body.append('<p id="render-check" class="muted">render check pending</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{CHECK_JS}</script>\n</body></html>\n"
    )


def figure(path: Path, caption: str) -> str:
    return f"<figure>{img_tag(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
