"""HTML markup for every section: escaping, elements with escaped attributes, an empty section.

Section modules build their markup as strings with these helpers; whatever comes from a run passes
through `_e` (``html.escape`` with quotes) before it reaches the page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

__all__: list[str] = []

Attrs = Mapping[str, object]


def _empty_section(ident: str, title: str, message: str) -> str:
    return (
        f'<section id="{ident}" class="section">\n<h2>{_e(title)}</h2>\n'
        f'<p class="empty">{_e(message)}</p>\n</section>\n'
    )


def _tag(name: str, attrs: Attrs, content: str | None = None) -> str:
    """An element with escaped attribute values; `content` is markup, already escaped."""
    if content is None and name in {"rect", "line", "circle", "path", "polyline"}:
        return _open(name, attrs)[:-1] + "/>"
    return f"{_open(name, attrs)}{content or ''}</{name}>"


def _open(name: str, attrs: Attrs) -> str:
    return f"<{name}" + "".join(f' {key}="{_e(value)}"' for key, value in attrs.items()) + ">"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
