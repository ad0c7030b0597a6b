"""What several sections read off a run, said in the same words everywhere: the maps the diagrams
show, a baseline by name, devices in order, a map's speed-up and its memory shortfall."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping

from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.domain import Candidate
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.sizes import format_bytes

__all__: list[str] = []


def _find(candidates: Iterable[Candidate], name: str) -> Candidate | None:
    return next((c for c in candidates if c.name == name), None)


def _shown(run: Run, auto: Candidate | None) -> list[tuple[str, Candidate]]:
    """The maps the diagrams show, by role: the winner and accelerate's `auto`."""
    shown = []
    if run.winner is not None:
        shown.append(("winner", run.winner))
    if auto is not None:
        shown.append(("auto", auto))
    return shown


def _caption(role: str, candidate: Candidate) -> str:
    return f"winner ({candidate.name})" if role == "winner" else "accelerate's auto"


def _sorted_devices(keys: Iterable[str]) -> list[str]:
    return sorted(set(keys), key=device_order)


def _by_device(mapping: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(mapping.items(), key=lambda item: device_order(item[0]))


def _speedup(prediction: Prediction, best: float) -> str:
    return f"{prediction.latency_s / best:.2f}×" if best > 0 else ""


def _shortfall(prediction: Prediction) -> str:
    return "; ".join(
        f"{device_label(m.device)} over by {format_bytes(m.over_by)}" for m in prediction.shortfalls
    )
