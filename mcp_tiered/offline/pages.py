"""The HTML style and page frame the offline pages share (the savings report, whatif): self-contained pages,
every caller-supplied text escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}
td,th{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}
svg{max-width:100%;font-size:11px}.frame{fill:none;stroke:#ccc}"""


def page(title: str, body: str, style: str = "", head: str = "") -> str:
    """A whole page: `title` (escaped), `body` (markup already escaped), the shared style and `style`."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{head}<title>{html.escape(title)}</title><style>{STYLE}
{style}</style></head>
<body>{body}</body></html>
"""


def table(table_id: str, headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of text cells, each escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
