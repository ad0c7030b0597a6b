"""The whole page: the document around the sections, with the stylesheet and the script inlined.

`style.css` and `report.js` ship next to this module as package data and are read through
`importlib.resources`, so the report renders the same from a source checkout and from a wheel.
They are inlined rather than linked: the page must open with no network and no other file.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib.resources import files

from reports.html.comparison import comparison_section
from reports.html.header import header_section
from reports.html.history import history_section
from reports.html.markup import _e
from reports.html.memory import memory_section
from reports.html.placement import placement_section
from reports.html.runs import _find
from reports.html.units import units_section
from tuner.core.domain import Candidate
from tuner.core.domain import ModelGraph
from tuner.core.domain import Run
from tuner.core.domain import UnitProfile

__all__ = ["render"]

#: Only inline styles and scripts, and data: images: the page cannot fetch anything.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def render(
    run: Run,
    candidates: Sequence[Candidate],
    graph: ModelGraph | None = None,
    profiles: Sequence[UnitProfile] = (),
) -> str:
    """The report of one run as a complete HTML document.

    Args:
        run: the run, with its winner and baselines (`Store.get_run`).
        candidates: the run's candidates (`Store.list_candidates`); those with `Candidate.trial`
            set make the optimization history, in trial order.
        graph: the model's units in execution order; orders the placement diagram and adds
            weight bytes to tooltips and to the per-unit chart.
        profiles: per-unit measurements; with them the page charts time and memory per unit.

    Returns:
        The document, starting with ``<!DOCTYPE html>``.
    """
    auto = _find(run.baselines, "auto")
    body = [
        header_section(run),
        comparison_section(run, candidates),
        placement_section(run, auto, graph),
        memory_section(run, auto),
        units_section(graph, profiles, run.hardware_name),
        history_section(run, candidates),
    ]
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(_POLICY)}">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{_e(f'Tuning run {run.id}: {run.model_name}')}</title>\n",
            f"<style>\n{_asset('style.css')}</style>\n</head>\n<body>\n<main>\n",
            *body,
            "</main>\n",
            f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n",
        ]
    )


@functools.cache
def _asset(name: str) -> str:
    """A file shipped with this package, read once."""
    return files("reports.html").joinpath(name).read_text(encoding="utf-8")
