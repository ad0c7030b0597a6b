"""The page's header: the run's name, its settings (model, hardware, workload, limits, pins,
exclusions, timings), a banner when the run is not complete, and the verdict."""

from __future__ import annotations

from reports.html.markup import _e
from reports.html.markup import _tag
from reports.html.runs import _by_device
from reports.html.verdict import verdict
from reports.terminal import format_seconds
from tuner.core.devices import device_label
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.sizes import format_bytes

__all__ = ["header_section"]


def header_section(run: Run) -> str:
    """The `<header>`: the run's title, its settings as a list of facts, the verdict."""
    limits = ", ".join(
        f"{device_label(key)}: {format_bytes(limit)}" for key, limit in _by_device(run.max_memory)
    )
    phases = ", ".join(f"{phase} {format_seconds(seconds)}" for phase, seconds in run.phase_seconds.items())
    rows = [
        ("model", run.model_name, run.model_fingerprint),
        ("hardware", run.hardware_name, run.hardware_fingerprint),
        ("workload", run.workload.describe(run.inputs), ""),
        ("status", run.status.value, ""),
        ("trials", str(run.trials), f"study {run.study_name}"),
        ("memory limits", limits or "what is free on each device", ""),
        ("pins", ", ".join(f"{unit} → {device_label(place)}" for unit, place in run.pins) or "none", ""),
        ("excluded devices", ", ".join(device_label(d) for d in run.exclude) or "none", ""),
        ("started", run.created_at.replace("T", " ") or "-", ""),
        ("time per phase", phases or "-", ""),
        ("run key", run.key, ""),
    ]
    facts = "".join(
        f"<dt>{_e(label)}</dt>"
        + _tag(
            "dd",
            {"data-field": label},
            _e(value) + (f' <span class="dim">{_e(extra)}</span>' if extra else ""),
        )
        for label, value, extra in rows
    )
    banner = ""
    if run.status is not RunStatus.COMPLETE:
        why = f" ({run.error})" if run.error else ""
        text = f"This run is {run.status.value}{why}: what follows is what was stored so far."
        banner = _tag("p", {"class": f"banner status-{run.status.value}"}, _e(text))
    return (
        f'<header id="header" class="section">\n<h1>{_e(f"Tuning run {run.id}: {run.model_name}")}</h1>\n'
        f'{banner}<dl class="facts">{facts}</dl>\n{verdict(run)}</header>\n'
    )
