"""The service's one page (``GET /``): the runs, newest first, filtered by a plain form, each linking
to its report and its map. Plain HTML and inline CSS: no script, nothing fetched from anywhere.

`runs_page` is pure: it takes the runs and the filters that chose them and returns the document.
Every value that comes from a run or the query is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from reports.terminal import format_seconds
from tuner.core.domain import Run
from tuner.core.domain import RunStatus

__all__ = ["POLICY", "runs_page"]

#: The page's Content-Security-Policy: its own inline style, nothing else.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"

_STYLE = """
body { margin: 0; color: #222; font: 14px/1.45 system-ui, 'DejaVu Sans', sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 22px; margin: 8px 0 12px; }
form { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: end; margin: 0 0 14px; }
label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
input, select, button { font: inherit; padding: 3px 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; white-space: nowrap; }
td.model { overflow-wrap: anywhere; }
.status-complete { color: #2a7a2a; }
.status-failed { color: #c00; }
.status-running, .status-queued { color: #1f5fa8; }
.status-interrupted { color: #b35900; }
.error { color: #c00; font-size: 12px; }
.empty { color: #888; font-style: italic; }
nav { margin: 12px 0; display: flex; gap: 16px; }
"""


def runs_page(runs: Sequence[Run], filters: Mapping[str, str], *, offset: int, limit: int, more: bool) -> str:
    """The runs page: a filter form holding `filters` (``model``, ``hardware``, ``status``), a
    table of `runs`, and links to the newer and older pages around `offset`.

    Returns:
        The document, starting with ``<!DOCTYPE html>``.
    """
    rows = "\n".join(_row(run) for run in runs)
    if not runs:
        rows = '<tr><td colspan="9" class="empty">no runs match</td></tr>'
    pages = []
    if offset > 0:
        pages.append(_page_link(filters, max(0, offset - limit), limit, "newer", "newer runs"))
    if more:
        pages.append(_page_link(filters, offset + limit, limit, "older", "older runs"))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(POLICY)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>device-map-tuner: runs</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Tuning runs</h1>
{_form(filters)}
<table class="runs">
<thead><tr><th>run</th><th>created (UTC)</th><th>model</th><th>hardware</th><th>workload</th>
<th>status</th><th>trials</th><th>winner</th><th>links</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<nav>{" ".join(pages)}</nav>
<p class="empty">The same as JSON: <a href="/v1/runs">/v1/runs</a>;
the API: <a href="/openapi.json">/openapi.json</a></p>
</main>
</body>
</html>
"""


def _form(filters: Mapping[str, str]) -> str:
    options = ['<option value="">any</option>']
    for status in RunStatus:
        chosen = " selected" if filters.get("status") == status.value else ""
        options.append(f'<option value="{status.value}"{chosen}>{status.value}</option>')
    model = escape(filters.get("model", ""))
    hardware = escape(filters.get("hardware", ""))
    return f"""<form method="get" action="/" class="filters">
<label>model contains <input name="model" value="{model}" maxlength="512"></label>
<label>hardware contains <input name="hardware" value="{hardware}" maxlength="512"></label>
<label>status <select name="status">{"".join(options)}</select></label>
<button type="submit">filter</button>
</form>"""


def _row(run: Run) -> str:
    shape = run.workload.shape(run.inputs)
    winner = ""
    if run.winner is not None and run.winner.prediction is not None:
        winner = f"{escape(run.winner.name)}: {format_seconds(run.winner.prediction.latency_s)}"
    links = f'<a href="/v1/runs/{run.id}/report" class="report">report</a>'
    if run.winner is not None:
        links += f' <a href="/v1/runs/{run.id}/map" class="map">map</a>'
    error = f'<div class="error">{escape(run.error)}</div>' if run.error else ""
    status = run.status.value
    return (
        f'<tr class="run" data-run="{run.id}" data-status="{status}">'
        f'<td class="num">{run.id}</td><td>{escape(run.created_at[:16].replace("T", " "))}</td>'
        f'<td class="model">{escape(run.model_name)}</td><td>{escape(run.hardware_name)}</td>'
        f'<td>{escape(shape)}</td><td class="status-{status}">{status}{error}</td>'
        f'<td class="num">{run.trials}</td><td>{winner}</td><td>{links}</td></tr>'
    )


def _page_link(filters: Mapping[str, str], offset: int, limit: int, rel: str, text: str) -> str:
    query = urlencode({**{k: v for k, v in filters.items() if v}, "offset": offset, "limit": limit})
    return f'<a href="/?{escape(query)}" rel="{rel}" class="{rel}">{text}</a>'
