"""The per-unit panel: each unit's forward time per phase on every device measured, and what it
needs in memory (its weights and its activation peak)."""

from __future__ import annotations

from collections.abc import Sequence

from reports.html.markup import _e
from reports.html.markup import _empty_section
from reports.html.markup import _tag
from reports.html.runs import _sorted_devices
from reports.html.svg import _ACTIVATION_COLOUR
from reports.html.svg import _WEIGHTS_COLOUR
from reports.html.svg import _WIDTH
from reports.html.svg import _colour
from reports.html.svg import _legend
from reports.html.svg import _n
from reports.html.svg import _svg_open
from reports.html.svg import _title
from reports.terminal import format_seconds
from tuner.core.devices import device_label
from tuner.core.domain import THIS_MACHINE
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import UnitProfile
from tuner.core.sizes import format_bytes

__all__ = ["units_section"]


def units_section(
    graph: ModelGraph | None, profiles: Sequence[UnitProfile], hardware: str = THIS_MACHINE
) -> str:
    """A row per unit, in the graph's order then any unit only the profiles name; `hardware` is
    the one the run was planned for (a spec's units are priced from estimates, never stored)."""
    if graph is None and not profiles:
        why = (
            "No model profile was given: `tuner profile` makes one."
            if hardware == THIS_MACHINE
            else f"Planned for {hardware}: its units are priced from estimates of the spec's figures, "
            "which are not stored."
        )
        return _empty_section("units", "Per unit", why)
    names = list(graph.unit_names) if graph is not None else []
    in_graph = set(names)
    names += [name for name in dict.fromkeys(p.unit for p in profiles) if name not in in_graph]
    devices = _sorted_devices({p.device for p in profiles})
    phases = [phase for phase in (Phase.PREFILL, Phase.DECODE) if any(p.phase is phase for p in profiles)]
    weights = {unit.name: unit.bytes for unit in graph.units} if graph is not None else {}
    activation = dict.fromkeys(names, 0)
    for profile in profiles:
        if profile.phase is Phase.PREFILL:
            activation[profile.unit] = max(activation[profile.unit], profile.activation_peak_bytes)
    name_w, gap, top = 200, 14, 22
    panel_w = (_WIDTH - name_w - gap * (len(phases) + 1)) / (len(phases) + 1)
    row_h = max(14, 4 + 6 * max(len(devices), 1))
    out = [_svg_open("chart units", top + len(names) * row_h + 6, {"data-units": len(names)})]
    x0 = float(name_w + gap)
    for phase in phases:
        out.append(_time_panel(phase, names, devices, profiles, (x0, top, panel_w, row_h)))
        x0 += panel_w + gap
    peak = max((weights.get(name, 0) + activation[name] for name in names), default=0)
    out.append(_panel_title(x0, f"memory (max {format_bytes(peak)})"))
    scale = panel_w / peak if peak > 0 else 0.0
    for row, name in enumerate(names):
        x = x0
        parts = (
            ("weights", "weights", weights.get(name, 0), _WEIGHTS_COLOUR),
            ("activation", "activation peak (prefill)", activation[name], _ACTIVATION_COLOUR),
        )
        for part, label, size, colour in parts:
            if size <= 0:
                continue
            attrs = {"class": "unit-mem", "data-unit": name, "data-part": part, "data-bytes": size}
            shape = {"x": _n(x), "y": top + row * row_h + 2, "width": _n(max(size * scale, 0.5))}
            tip = f"{name}: {label} {format_bytes(size)}"
            out.append(_tag("rect", {**attrs, **shape, "height": row_h - 4, "fill": colour}, _title(tip)))
            x += size * scale
    for row, name in enumerate(names):
        attrs = {
            "class": "unit-name",
            "data-unit": name,
            "x": name_w - 4,
            "y": _n(top + row * row_h + row_h / 2 + 4),
        }
        out.append(_tag("text", {**attrs, "text-anchor": "end"}, _e(_clip(name, 32)) + _title(name)))
    out.append("</svg>")
    legend = _legend(
        [(device_label(d), _colour(d)) for d in devices]
        + [("weights", _WEIGHTS_COLOUR), ("activation peak (prefill)", _ACTIVATION_COLOUR)]
    )
    return (
        '<section id="units" class="section">\n<h2>Per unit</h2>\n'
        '<p class="note">Forward time of each unit per phase, one bar per compute device measured, and what '
        "it needs in memory: its weights and the peak of its activations.</p>\n"
        f"{legend}{''.join(out)}</section>\n"
    )


def _time_panel(
    phase: Phase,
    names: list[str],
    devices: list[str],
    profiles: Sequence[UnitProfile],
    box: tuple[float, int, float, int],
) -> str:
    x0, top, panel_w, row_h = box
    index = {(p.unit, p.device): p for p in profiles if p.phase is phase}
    peak = max((p.time_s for p in index.values()), default=0.0)
    scale = panel_w / peak if peak > 0 else 0.0
    out = [_panel_title(x0, f"{phase.value} time (max {format_seconds(peak)})")]
    for row, name in enumerate(names):
        for lane, device in enumerate(devices):
            measured = index.get((name, device))
            if measured is None:
                continue
            tip = f"{name} on {device_label(device)}, {phase.value}: {format_seconds(measured.time_s)}"
            if measured.shared:
                tip += f" (measured as {measured.measured_as})"
            attrs = {
                "class": "unit-time",
                "data-unit": name,
                "data-device": device,
                "data-phase": phase.value,
                "data-seconds": repr(measured.time_s),
            }
            y = top + row * row_h + 2 + lane * 6
            shape = {"x": _n(x0), "y": y, "width": _n(max(measured.time_s * scale, 0.5)), "height": 5}
            out.append(_tag("rect", {**attrs, **shape, "fill": _colour(device)}, _title(tip)))
    return "".join(out)


def _panel_title(x: float, text: str) -> str:
    return _tag("text", {"class": "panel-title", "x": _n(x), "y": 14}, _e(text))


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else "…" + text[-(size - 1) :]
