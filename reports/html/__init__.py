"""A tuning run as one self-contained HTML page: what `tuner report` writes.

`render` is pure: it takes the domain objects the store hands out and returns the text of one
document with inline CSS, inline SVG charts and a few lines of inline JavaScript (hovering a unit
highlights it in every chart). Nothing is fetched: a Content-Security-Policy in the page forbids
any network request, so the file can be mailed, archived or opened offline.

One module draws each section of the page (`header` with its `verdict`, `comparison`,
`placement`, `memory`, `units`, `history`); `page` puts them together and inlines `style.css`
and `report.js`, which ship as package data. `markup`, `svg` and `runs` hold what the sections
share: HTML, chart geometry and colours, and what several of them read off the run.

Every value that comes from a run is escaped with `html.escape`. Every chart element that carries
data has a stable class and ``data-`` attributes, so a test (or a script) can find what rendered:

- ``svg.chart.placement[data-candidate]``: ``rect.unit[data-unit][data-device][data-exec]``;
- ``svg.chart.memory[data-candidate]``: ``rect.mem[data-device][data-part][data-bytes]``,
  ``line.limit[data-device][data-bytes]``;
- ``svg.chart.units``: ``rect.unit-time[data-unit][data-device][data-phase][data-seconds]``,
  ``rect.unit-mem[data-unit][data-part][data-bytes]``;
- ``svg.chart.history``: ``circle.trial.feasible[data-trial]``, ``path.trial.infeasible``,
  ``path.trial.unpriced``, ``polyline.best-so-far``, ``line.baseline[data-baseline]``;
- ``table.comparison``: ``tr.candidate[data-candidate]``, class ``oom`` when the map does not fit.

Example:
    >>> from reports.html import render
    >>> page = render(store.get_run(7), store.list_candidates(7))  # doctest: +SKIP
    >>> Path("report.html").write_text(page, encoding="utf-8")  # doctest: +SKIP
"""

from __future__ import annotations

from reports.html.page import render
from reports.html.svg import MEMORY_PARTS

__all__ = ["MEMORY_PARTS", "render"]
