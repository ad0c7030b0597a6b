"""Optuna search over device maps: the caller's named maps and a parametrised manual class.

The only module of the project that imports optuna. `search` runs one study per call (created,
or loaded with ``load_if_exists`` to resume it), in the same database as the project's tables when
`storage` is a URL. The objective is ``CostModel.predict(map).latency_s``. Memory limits are
constraints (one per device: bytes over its limit, feasible when <= 0), so a map that does not fit
is a COMPLETE trial with a positive constraint, never a failed one.

The space, define-by-run:

* ``strategy``: one of the named maps the caller passed (accelerate's ``auto``, ``balanced``...),
  evaluated as is, or ``manual``.
* ``manual`` decodes a few numbers into a map of the exact solver's class (`tuner.plan.exact`): each
  GPU used holds one contiguous block of the resident units, in execution order; any unit may be
  offloaded to ``cpu``/``disk``, and then executes on the main device (the lowest GPU used) and
  streams its weights in on every call; with no GPU the whole model executes on the cpu.

  - ``gpus <ids>``: how many GPUs of each class of interchangeable GPUs (same limit, overhead,
    unit timings, and links that a swap leaves unchanged) the map uses, lowest ids first. Pinned
    GPUs are always used. No GPU at all means the cpu computes (when it may).
  - ``order`` (a permutation of the classes) or ``position <ids>`` (random keys, beyond three
    classes): the order of the blocks along the model; asked only when two classes are used.
  - ``fill <gpu>``, for every GPU of the order but the last, which holds the rest: the fraction
    of its memory (limit minus runtime overhead) its block may take. Blocks are filled unit by
    unit with the cost model's own memory accounting, so 1 means "as much as fits"; the range
    goes to 1.25, everything from 1 up meaning full, so the prior puts mass on that edge.
  - ``priority <unit> +n``: per class of interchangeable units (same class, bytes, calls, KV cache
    and working set: a model's decoder layers form one class, its embedding another), a key;
    units are offloaded class by class in increasing key, the first units of a class first.
  - ``offload <unit>`` for a class of units without weights (rotary embeddings): offloading them
    streams nothing and only moves where they execute, so it is a choice of its own.

  The decoder then repairs the map with the least change that makes it fit: it fills the GPUs
  further (every fill moved the same share of the way to full), and when full GPUs are not
  enough, offloads the fewest units in priority order. Both are binary searches over
  ``predict``'s feasibility. Offloaded units go to the cpu; when its limit cannot hold them all,
  the cpu keeps those whose disk reads would cost most (most calls, then largest) and the rest
  go to disk.

  Why this parametrisation: a generate call runs the units one after the other, so a good map
  puts as much as fits on the fastest devices and streams the fewest, cheapest bytes. Without the
  repair, TPE has to hit the very edge of memory by chance: fills within 0.3 % of full on three
  GPUs at once (mixtral on 4 x L4), or the exact offload count of each class (llama-2-7b, batch
  8, on one A10G offloads the embedding, the head and three layers). An earlier version that
  asked per-class offload counts and plain fills stayed 2 to 95 % above the optimum after 300
  trials on such scenarios, and one without the fill step settled on the cpu alone, 163 % above.
  With the repair nearly every decoded map fits, and TPE only learns which GPUs, in which order,
  how full, and which classes to stream first (benchmarks/results/search_quality.md).

Seeds (the caller passes accelerate's maps and the exact optimum) are enqueued before any sampled
trial, so the best feasible result is never worse than a feasible seed. Seeds and strategies that
break a pin or use an excluded device are left out. With `seed` set, two runs over the same
storage contents give the same trials.

Interrupting: on KeyboardInterrupt Optuna marks the running trial FAIL and re-raises; `search`
restores Optuna's log level and lets it propagate. A KeyboardInterrupt can come at a moment when
Optuna is in the middle of its own bookkeeping (asking for a trial, telling its result), and then
leaves a RUNNING trial, or turns into an UnboundLocalError inside Optuna; a caller that catches
signals itself passes `stop` instead, and the search ends after the trial that is running (its
caller then raises). Calling `search` again with ``load_if_exists=True`` and the same
`study_name` continues the study (trial numbers continue; seeds already evaluated are not
enqueued again).

Several workers, one study: the database is given as a `Database`, which says how to reach it
as the tuner's own store does and how to retry a call the database refused as busy; every call
of Optuna's storage goes through that retry. Each trial records Optuna's heartbeat, and a trial
left RUNNING by a worker that died (killed, its machine gone) is marked FAIL by the next worker
to start a trial once its heartbeat is `Database.grace_period` seconds old (one that died before
its first heartbeat is given one when it is first seen, so it ages the same way); such trials
never count towards `total`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import optuna

from tuner.core.devices import OFFLOAD
from tuner.core.devices import device_order
from tuner.core.devices import to_key
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import Prediction

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial
    from optuna.trial import Trial

    from tuner.plan.costmodel import CostModel

__all__ = ["Database", "SearchResult", "create_study", "search", "settled_trials", "trials_left"]

T = TypeVar("T")

#: The `strategy` choice that decodes a map from the manual parameters.
MANUAL = "manual"
#: User attributes of every trial: its map (placements in unit order, comma-separated), the bytes
#: over the limit per device the map uses, and for an enqueued seed its position in `seeds`.
MAP_ATTR = "map"
SEED_ATTR = "seed"
#: Constraint of a map the cost model cannot price (the hardware lacks a link it needs).
UNPRICEABLE = "unpriceable"
#: `fill` ranges up to this; from 1 up it means full.
_FILL_HIGH = 1.25
#: Steps of the binary search that fills the GPUs further until a map fits.
_REPAIR_STEPS = 64
#: Up to this many GPU classes the block order is one categorical over permutations.
_MAX_PERMUTED = 3
#: Optuna 5 records constraints with `Trial.set_constraint`; older releases read them through the
#: sampler's `constraints_func` (deprecated in 5.0) from a user attribute.


def _call_once(call: Callable[[], T]) -> T:
    return call()


@dataclass(frozen=True)
class Database:
    """The database that holds the studies (the tuner's own), and how to share it with other
    processes.

    Args:
        url: its SQLAlchemy URL.
        engine_kwargs: for Optuna's engine (``RDBStorage(url, engine_kwargs=...)``): SQLite's busy
            timeout and journal set-up, as the tuner's store has them.
        retry: calls a function again while the database refuses it as busy
            (`storage.retrying`); every call of Optuna's storage goes through it.
        lock: the database's cross-process lock (`storage.Store.exclusive`), held while Optuna
            opens the database (and creates its tables in a fresh one).
        heartbeat_interval: seconds between the heartbeats of a running trial.
        grace_period: a RUNNING trial whose heartbeat is this old lost its worker, and is marked
            FAIL. Longer than a trial's bookkeeping may wait for a busy database, so that a slow
            worker's trial is never taken for a dead one.
    """

    url: str
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    retry: Callable[[Callable[[], Any]], Any] = _call_once
    lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    heartbeat_interval: int = 5
    grace_period: int = 120


@dataclass(frozen=True)
class SearchResult:
    """What a search found.

    Args:
        best: the best feasible candidate of the whole study (earlier sessions of a resumed study
            included), or None while no trial fits.
        candidates: one per trial finished in this call, in trial order, named ``trial <n>``.
        study_name: the Optuna study holding every trial.
        study_trials: complete trials in the study after this call, whichever worker ran them.
        study_candidates: one per complete trial of the study, whichever worker ran it (some
            may have died before they stored theirs), in trial order.
    """

    best: Candidate | None
    candidates: tuple[Candidate, ...]
    study_name: str
    study_trials: int = 0
    study_candidates: tuple[Candidate, ...] = ()


class _Space:
    """The manual branch: classes of GPUs and of units, computed once, and the decoder."""

    def __init__(self, model: CostModel, pins: Mapping[str, str], exclude: Collection[str]) -> None:
        self.model = model
        names = self.names = model.graph.unit_names
        index = {name: i for i, name in enumerate(names)}
        keys = {d.key for d in model.hardware.devices}
        self.excluded = frozenset(to_key(d) for d in exclude)
        self.gpus = sorted(
            (d for d in model.compute_devices if d != "cpu" and d not in self.excluded), key=device_order
        )
        self.cpu_main = "cpu" in model.compute_devices and "cpu" not in self.excluded
        self.offload_places = [p for p in OFFLOAD if p in keys and p not in self.excluded]
        units = model.graph.units
        self.param = [u.param_bytes for u in units]
        self.buffer = [u.buffer_bytes for u in units]
        self.cache = list(model.cache_bytes)
        self.work = list(model.working_set_bytes)
        self.items = model.graph.placement_groups()
        self.weight = [sum(self.param[u] for u in members) for members in self.items]
        # loads of an offloaded item's weights per generate call
        self.reads = [
            sum(units[u].calls + model.workload.decode_steps * units[u].decode_calls for u in members)
            for members in self.items
        ]
        self.pinned = self._pins(pins, index)
        self.pins = {names[u]: place for item, place in self.pinned.items() for u in self.items[item]}
        self.pinned_gpus = sorted({p for p in self.pinned.values() if p not in OFFLOAD}, key=device_order)
        self.first_pin = {
            gpu: min(index[u] for u, p in self.pins.items() if p == gpu) for gpu in self.pinned_gpus
        }
        # classes of interchangeable free items, in order of their first unit

        def signature(u: int) -> tuple[object, ...]:
            unit = units[u]
            return (unit.module_class, unit.param_bytes, unit.buffer_bytes, unit.calls, unit.decode_calls,
                    self.cache[u], self.work[u])  # fmt: skip

        by_key: dict[tuple[object, ...], list[int]] = {}
        for k, members in enumerate(self.items):
            if k not in self.pinned:
                by_key.setdefault(tuple(signature(u) for u in members), []).append(k)
        self.unit_classes = sorted(by_key.values(), key=lambda items: items[0])
        self.unit_labels = [
            names[self.items[c[0]][0]] + (f" +{len(c) - 1}" if len(c) > 1 else "") for c in self.unit_classes
        ]
        self.weightless = [
            all(self.param[u] == 0 for i in c for u in self.items[i]) for c in self.unit_classes
        ]
        self.gpu_classes = self._gpu_classes()
        self.gpu_labels = [",".join(c) for c in self.gpu_classes]
        # the block order: one categorical over permutations of the classes while there are few
        permutations = itertools.permutations(range(len(self.gpu_classes)))
        self.orders = (
            {" | ".join(self.gpu_labels[c] for c in p): p for p in permutations}
            if len(self.gpu_classes) <= _MAX_PERMUTED
            else {}
        )

    def _pins(self, pins: Mapping[str, str], index: Mapping[str, int]) -> dict[int, str]:
        """Pinned placement per item; a pin on one unit of a tied group pins the group."""
        allowed = set(self.gpus) | set(self.offload_places) | ({"cpu"} if self.cpu_main else set())
        item_of = {u: k for k, members in enumerate(self.items) for u in members}
        pinned: dict[int, str] = {}
        for unit, where in pins.items():
            if unit not in index:
                raise ValueError(f"pin names unknown unit {unit!r}")
            try:
                place = to_key(where)
            except ValueError as exc:
                raise ValueError(f"unit {unit!r}: {exc}") from None
            if place not in allowed:
                raise ValueError(f"unit {unit!r} is pinned to {place}, which this search may not use")
            item = item_of[index[unit]]
            if pinned.get(item, place) != place:
                raise ValueError(f"units tied to {unit!r} are pinned to two devices")
            pinned[item] = place
        return pinned

    def _gpu_classes(self) -> list[list[str]]:
        """Interchangeable GPUs, grouped; a pinned GPU is a class of its own."""
        classes: list[list[str]] = []
        for gpu in self.gpus:
            home = None
            if gpu not in self.pinned_gpus:
                home = next(
                    (
                        c
                        for c in classes
                        if c[0] not in self.pinned_gpus and self.model.interchangeable(c[0], gpu)
                    ),
                    None,
                )
            if home is None:
                classes.append([gpu])
            else:
                home.append(gpu)
        return classes

    # -- the decoder ----------------------------------------------------------------------------

    def suggest(self, trial: Trial) -> DeviceMap:
        """Ask the manual parameters of `trial` and decode them into a map."""
        order = self._order(trial)
        fills = {gpu: min(1.0, trial.suggest_float(f"fill {gpu}", 0.0, _FILL_HIGH)) for gpu in order[:-1]}
        base = [""] * len(self.names)
        for item, place in self.pinned.items():
            for u in self.items[item]:
                base[u] = place
        priority: dict[int, float] = {}
        for c, (label, members) in enumerate(zip(self.unit_labels, self.unit_classes, strict=True)):
            if not self.weightless[c]:
                priority[c] = trial.suggest_float(f"priority {label}", 0.0, 1.0)
            elif order and self.offload_places:
                for item in members[: trial.suggest_int(f"offload {label}", 0, len(members))]:
                    for u in self.items[item]:
                        base[u] = self.offload_places[0]
        queue = [
            item for c in sorted(priority, key=lambda c: (priority[c], c)) for item in self.unit_classes[c]
        ]
        return self._repair(base, order, fills, queue)

    def _order(self, trial: Trial) -> list[str]:
        """The GPUs the map uses, in the order of their blocks along the model."""
        used: list[list[str]] = []
        for label, members in zip(self.gpu_labels, self.gpu_classes, strict=True):
            if members[0] in self.pinned_gpus:
                used.append(members)
            else:
                used.append(members[: trial.suggest_int(f"gpus {label}", 0, len(members))])
        if not any(used) and not self.cpu_main and self.gpus:
            used[0] = self.gpu_classes[0][:1]  # the cpu may not compute: one GPU at least
        present = [c for c in range(len(used)) if used[c]]
        if len(present) > 1:
            if self.orders:
                chosen = self.orders[str(trial.suggest_categorical("order", list(self.orders)))]
                present = [c for c in chosen if used[c]]
            else:
                keys = {c: trial.suggest_float(f"position {self.gpu_labels[c]}", 0.0, 1.0) for c in present}
                present.sort(key=lambda c: (keys[c], c))
        order = [gpu for c in present for gpu in used[c]]
        # pinned GPUs keep the order of their pinned units along the model
        slots = [i for i, gpu in enumerate(order) if gpu in self.first_pin]
        for slot, gpu in zip(
            slots, sorted((order[i] for i in slots), key=self.first_pin.__getitem__), strict=True
        ):
            order[slot] = gpu
        return order

    def _repair(
        self, base: list[str], order: list[str], fills: Mapping[str, float], queue: list[int]
    ) -> DeviceMap:
        """The map the parameters ask for, changed as little as it takes to fit: GPUs filled
        further first (every fill moved the same share `t` of the way to full), then the fewest
        units of `queue` offloaded. Both are binary searches: memory frees up as `t` or `k` grow."""

        def build(k: int, t: float) -> DeviceMap:
            placement = list(base)
            self._offload(placement, queue[:k], gpu_main=bool(order))
            if order:
                self._blocks(placement, order, {gpu: fill + t * (1.0 - fill) for gpu, fill in fills.items()})
            else:
                placement = [place or "cpu" for place in placement]
            return DeviceMap(tuple(zip(self.names, placement, strict=True)))

        def least(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
            while lo < hi:
                mid = (lo + hi) // 2
                if fits(mid):
                    hi = mid
                else:
                    lo = mid + 1
            return lo

        dmap = build(0, 0.0)
        if self._fits(dmap):
            return dmap
        if fills and self._fits(build(0, 1.0)):
            steps = least(1, _REPAIR_STEPS, lambda s: self._fits(build(0, s / _REPAIR_STEPS)))
            return build(0, steps / _REPAIR_STEPS)
        can_offload = self.offload_places if order else [p for p in self.offload_places if p == "disk"]
        if not queue or not can_offload:
            return build(0, 1.0)
        return build(least(1, len(queue), lambda k: self._fits(build(k, 1.0))), 1.0)

    def _fits(self, dmap: DeviceMap) -> bool:
        try:
            return self.model.predict(dmap).feasible
        except ValueError:
            return False

    def _offload(self, placement: list[str], items: list[int], gpu_main: bool) -> None:
        """Offload `items` to the cpu, or to disk where the cpu's limit cannot hold them all: the
        cpu keeps the items whose disk reads would cost most (most calls, then largest first,
        the greedy for this knapsack). With the cpu as main device (no GPU) the cpu holds the
        model anyway: offloading means disk."""
        if not gpu_main or "cpu" not in self.offload_places:
            places = dict.fromkeys(items, "disk")
        elif "disk" not in self.offload_places:
            places = dict.fromkeys(items, "cpu")
        else:
            room = self.model.limit("cpu") - self.model.overhead("cpu")
            room -= sum(self.param[u] for u, place in enumerate(placement) if place == "cpu")
            places = {}
            for item in sorted(items, key=lambda item: (-self.reads[item], -self.weight[item], item)):
                fits = self.weight[item] <= room
                places[item] = "cpu" if fits else "disk"
                room -= self.weight[item] if fits else 0
        for item, place in places.items():
            for u in self.items[item]:
                placement[u] = place

    def _blocks(self, placement: list[str], order: list[str], fills: Mapping[str, float]) -> None:
        """Give each GPU of `order` its block of the resident units, filled to its fraction; the
        last takes the rest. A block always reaches the units pinned to its GPU and stops before
        a unit pinned to a later one."""
        main = min(order, key=device_order)
        # what the offloaded units hold on the main device: buffers, KV cache, the widest stream-in
        fixed_sum = fixed_max = 0
        for u, place in enumerate(placement):
            if place in OFFLOAD:
                fixed_sum += self.buffer[u] + self.cache[u]
                fixed_max = max(fixed_max, self.work[u] + self.param[u])
        atoms = self._atoms(placement)
        pinned_to = [{placement[u] for u in atom if placement[u]} for atom in atoms]
        position = {gpu: i for i, gpu in enumerate(order)}
        a = 0
        for i, gpu in enumerate(order):
            last = i == len(order) - 1
            budget = 0.0 if last else fills[gpu] * (self.model.limit(gpu) - self.model.overhead(gpu))
            must = max((k for k in range(a, len(atoms)) if gpu in pinned_to[k]), default=-1)
            total, widest = (fixed_sum, fixed_max) if gpu == main else (0, 0)
            while a < len(atoms):
                atom = atoms[a]
                later = any(position.get(p, -1) > i for p in pinned_to[a])
                grown = total + sum(self.param[u] + self.buffer[u] + self.cache[u] for u in atom)
                wider = max(widest, max(self.work[u] for u in atom))
                if not last and a > must and (later or grown + wider > budget):
                    break
                for u in atom:
                    placement[u] = placement[u] or gpu
                total, widest = grown, wider
                a += 1

    def _atoms(self, placement: list[str]) -> list[list[int]]:
        """Resident units in runs one GPU must hold whole: a unit, or everything between the
        members of a resident tied group (they share a GPU, and each GPU holds one block)."""
        spans = {members[0]: members[-1] for members in self.items
                 if len(members) > 1 and placement[members[0]] not in OFFLOAD}  # fmt: skip
        atoms: list[list[int]] = []
        end = -1
        for u, place in enumerate(placement):
            if place in OFFLOAD:
                continue
            if atoms and u <= end:
                atoms[-1].append(u)
            else:
                atoms.append([u])
            end = max(end, spans.get(u, -1))
        return atoms

    def admits(self, dmap: DeviceMap) -> bool:
        """Whether a given map respects the pins and the excluded devices."""
        placements = dict(dmap.placements)
        if any(placements.get(unit) != place for unit, place in self.pins.items()):
            return False
        return not any(place in self.excluded for place in placements.values())


def _encode(model: CostModel, dmap: DeviceMap) -> str:
    return ",".join(model.placements(dmap))


def _decode(model: CostModel, text: str) -> DeviceMap:
    return DeviceMap(tuple(zip(model.graph.unit_names, text.split(","), strict=True)))


def _constrain(trial: Trial, constraints: Mapping[str, float]) -> None:
    for key, value in constraints.items():
        trial.set_constraint(key, value)


def _feasible(trial: FrozenTrial) -> bool:
    constraints = trial.constraints.values()
    return bool(constraints) and all(value <= 0 for value in constraints)


def _price(model: CostModel, trial: Trial, dmap: DeviceMap) -> tuple[float, Prediction | None]:
    """Objective value of a map; records its map and constraints on the trial."""
    trial.set_user_attr(MAP_ATTR, _encode(model, dmap))
    try:
        prediction = model.predict(dmap)
    except ValueError as e:
        trial.set_user_attr("error", str(e))
        _constrain(trial, {UNPRICEABLE: 1.0})
        return math.inf, None
    _constrain(trial, {memory.device: float(memory.over_by) for memory in prediction.memory})
    return prediction.latency_s, prediction


def _sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """Multivariate TPE, grouped by the branch a trial took: what a map is depends on the order
    of the offload priorities, a relation between parameters that independent TPE cannot model
    (on t5-3b over one A10G it stayed 17 % above the optimum for 1000 trials with one seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group
        # Constraints reach the sampler through `trial.set_constraint`; no constraints_func.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


#: The methods of Optuna's RDB storage that reach the database: the public ones and the private
#: ones its cache (`optuna.storages._CachedStorage`) calls.
_DATABASE_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "_get_best_trial_id",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


class _SharedStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage on the tuner's database: its engine set up as the tuner's store sets
    up its own, Optuna's heartbeat on, and every call that reaches the database retried while
    the database is busy (`Database.retry`)."""

    def __init__(self, database: Database) -> None:
        self._retry = database.retry
        self._lock = database.lock
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
            super().__init__(
                database.url,
                engine_kwargs=dict(database.engine_kwargs),
                heartbeat_interval=database.heartbeat_interval,
                grace_period=database.grace_period,
            )


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: _SharedStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: method(self, *args, **kwargs))

    return call


for _name in _DATABASE_METHODS:
    setattr(_SharedStorage, _name, _retried(_name))

_set_state_retried = _SharedStorage.set_trial_state_values


def _set_trial_state_values(
    self: _SharedStorage, trial_id: int, state: optuna.trial.TrialState, values: Sequence[float] | None = None
) -> bool:
    """Optuna's, under the database's lock when a worker takes an enqueued trial (WAITING to
    RUNNING): Optuna reads the state, then writes it, and on SQLite the read runs outside the
    write's transaction, so two workers could both take one seed ("Cannot tell a COMPLETE
    trial" for the second); under the lock the second reads RUNNING and takes another."""
    if state is not optuna.trial.TrialState.RUNNING:
        return bool(_set_state_retried(self, trial_id, state, values))
    with self._lock():
        return bool(_set_state_retried(self, trial_id, state, values))


_SharedStorage.set_trial_state_values = _set_trial_state_values  # type: ignore[method-assign, assignment]

_stale_retried = _SharedStorage._get_stale_trial_ids


def _get_stale_trial_ids(self: _SharedStorage, study_id: int) -> list[int]:
    """Optuna's; and a RUNNING trial of the study that has no heartbeat at all gets one now, by
    the database's clock. A worker killed after its trial started and before the trial's
    heartbeat thread recorded once left a trial that Optuna's check skips for good: the run
    waited on it, and a worker that resumed it waited too. Given a heartbeat, it is failed once
    that ages past the grace period, as any dead worker's trial; a live worker's own heartbeat
    thread keeps it fresh (its first insert then loses to this one, which Optuna ignores)."""
    from optuna.storages._rdb import models

    stale: list[int] = _stale_retried(self, study_id)

    def unbeaten() -> list[int]:
        with self.scoped_session() as session:
            query = (
                session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            )
            return [trial_id for (trial_id,) in query.all()]

    for trial_id in self._retry(unbeaten):
        self.record_heartbeat(trial_id)
    return stale


_SharedStorage._get_stale_trial_ids = _get_stale_trial_ids  # type: ignore[method-assign, assignment]


@contextlib.contextmanager
def _opened(
    storage: str | Database | optuna.storages.BaseStorage | None,
) -> Iterator[optuna.storages.BaseStorage | None]:
    """Optuna's storage for `storage`; one made here is closed at the end (for SQLite, so that no
    connection of this process keeps the database open)."""
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        yield storage
        return
    database = Database(storage) if isinstance(storage, str) else storage
    # Opening a database without Optuna's tables creates them, check first, then create: under
    # the database's lock, or workers doing it at once collide ("table ... already exists").
    with database.lock():
        made = database.retry(lambda: _SharedStorage(database))
    try:
        yield made
    finally:
        made.remove_session()
        made.engine.dispose()


def create_study(storage: str | Database, study_name: str) -> None:
    """Create the empty study of a run in `storage` (a URL) ahead of its search, so that a worker
    that finds the run can join it without two processes racing to create Optuna's tables or
    the study (`search` then loads it with ``load_if_exists=True``)."""
    with _optuna_quiet(), _opened(storage) as opened:
        optuna.create_study(storage=opened, study_name=study_name, direction="minimize", load_if_exists=True)


def trials_left(storage: Database, study_name: str, total: int) -> int:
    """How many more trials a worker that joins the study may start before it holds `total`:
    trials complete, running or waiting (seeds) count as spent, as `search` counts them
    (`_budget_spent`); those of a worker that died (its heartbeat too old) are failed first."""
    state = optuna.trial.TrialState
    with _live_study(storage, study_name) as study:
        spent = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING, state.WAITING))
        return max(0, total - len(spent))


def settled_trials(model: CostModel, storage: Database, study_name: str) -> tuple[Candidate, ...] | None:
    """Every complete trial of the study as a candidate, once no live worker runs a trial of it;
    None while one does. A worker whose search ended waits for this before it completes the
    run, so that the run completes when the last trial ends, with all of them. A trial whose
    worker died (its heartbeat too old) is failed here rather than waited for."""
    state = optuna.trial.TrialState
    with _live_study(storage, study_name) as study:
        if study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            return None
        complete = study.get_trials(deepcopy=False, states=(state.COMPLETE,))
        return tuple(_candidate(model, trial) for trial in complete)


@contextlib.contextmanager
def _live_study(storage: Database, study_name: str) -> Iterator[optuna.Study]:
    """The stored study, its trials whose worker died (heartbeat too old) failed first."""
    with _optuna_quiet(), _opened(storage) as opened:
        assert opened is not None  # a Database opens as Optuna's RDB storage
        study = optuna.load_study(storage=opened, study_name=study_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
            optuna.storages.fail_stale_trials(study)
        yield study


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna logs a line per trial at INFO, and a failed trial at WARNING with its traceback (an
    interrupted one included); the caller shows progress and errors its own way."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def search(
    model: CostModel,
    *,
    storage: str | Database | optuna.storages.BaseStorage | None,
    study_name: str,
    trials: int,
    timeout: float | None = None,
    strategies: Mapping[str, DeviceMap] = {},  # noqa: B006 - read only
    seeds: Sequence[DeviceMap] = (),
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    seed: int | None = None,
    on_trial: Callable[[Candidate], None] | None = None,
    load_if_exists: bool = False,
    total: int | None = None,
    stop: Callable[[], bool] | None = None,
    fail_running: bool = False,
) -> SearchResult:
    """Search device maps of `model` with Optuna's TPE sampler: the fastest map that fits wins.

    Args:
        model: prices maps; ``predict(map).latency_s`` is the objective.
        storage: the project's database (a `Database`, or its SQLAlchemy URL), an Optuna
            storage, or None for memory.
        study_name: the study to create (or to continue, with `load_if_exists`).
        trials: trials to run in this call, enqueued seeds included (every seed runs even when
            there are more seeds than `trials`).
        timeout: seconds after which no new trial starts.
        strategies: named maps the ``strategy`` parameter may choose (accelerate's own).
        seeds: maps evaluated first, in order (accelerate's maps, the exact optimum).
        pins: unit name -> placement every map must use.
        exclude: devices no map may use.
        seed: seeds the sampler; the same seed gives the same trials.
        on_trial: called with each finished trial's candidate (to store it, to move a progress
            bar).
        load_if_exists: continue the study `study_name` if it exists (``--resume``), or join it
            while another worker searches it (several processes on one RDB study).
        total: stop once the study holds this many complete trials, whichever worker ran them
            (Optuna's ``MaxTrialsCallback``), so that workers on one study share one budget; a
            trial that would pass it is not run (`_budget_spent`), so together they run exactly
            that many. The seeds still all run.
        stop: asked after every trial; True ends the search there, as if the trials ran out
            (the caller, which knows why, says so). When it is True, an error from inside
            Optuna (a second Ctrl-C in the middle of its bookkeeping) becomes KeyboardInterrupt.
        fail_running: mark the study's RUNNING trials FAIL before searching, when the caller
            knows that no worker runs them any more (every process of the run died), rather than
            wait for their heartbeats to age (`Database.grace_period`).

    Returns:
        The best feasible candidate of the study, the candidates of this call, the study name,
        and every complete trial of the study.

    Raises:
        ValueError: a bad pin, a seed that does not place the model's units, a strategy named
            ``manual``, or a negative `trials`.
        KeyboardInterrupt: once Optuna has marked the running trial FAIL. Resume with
            ``load_if_exists=True``.

    Example:
        >>> result = search(model, storage=None, study_name="run-7", trials=300)  # doctest: +SKIP
        >>> result.best.device_map.to_hf(), result.best.prediction.latency_s  # doctest: +SKIP
    """
    if trials < 0:
        raise ValueError(f"trials must be 0 or more (got {trials})")
    if MANUAL in strategies:
        raise ValueError(f"a strategy may not be named {MANUAL!r}")
    space = _Space(model, pins, exclude)
    for dmap in [*seeds, *strategies.values()]:
        model.placements(dmap)  # raises on a map of another model
    named = {name: dmap for name, dmap in strategies.items() if space.admits(dmap)}
    choices = [*named, MANUAL]
    made: dict[int, tuple[DeviceMap, Prediction | None]] = {}
    untold: set[int] = set()  # trials this process started whose end Optuna has not recorded
    candidates: list[Candidate] = []

    def objective(trial: Trial) -> float:
        untold.add(trial.number)
        if total is not None and SEED_ATTR not in trial.user_attrs and _budget_spent(trial, total):
            trial.study.stop()
            raise optuna.TrialPruned("the study's trial budget is spent")
        if SEED_ATTR in trial.user_attrs:
            dmap = _decode(model, trial.user_attrs[MAP_ATTR])
        else:
            strategy = str(trial.suggest_categorical("strategy", choices))
            dmap = named[strategy] if strategy != MANUAL else space.suggest(trial)
        value, prediction = _price(model, trial, dmap)
        made[trial.number] = (dmap, prediction)
        return value

    def finished(study: optuna.Study, frozen: FrozenTrial) -> None:
        untold.discard(frozen.number)
        if frozen.number not in made:
            return  # not run: the budget was spent
        dmap, prediction = made.pop(frozen.number)
        candidate = Candidate(f"trial {frozen.number}", dmap, prediction, trial=frozen.number)
        candidates.append(candidate)
        if on_trial is not None:
            on_trial(candidate)

    def stopped(study: optuna.Study, frozen: FrozenTrial) -> None:
        if stop is not None and stop():
            study.stop()

    with _optuna_quiet(), _opened(storage) as opened:
        study = optuna.create_study(
            storage=opened, sampler=_sampler(seed), study_name=study_name, direction="minimize",
            load_if_exists=load_if_exists,
        )  # fmt: skip
        if fail_running:
            _fail_running(study)
        waiting = _enqueue_seeds(study, model, [dmap for dmap in seeds if space.admits(dmap)])
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [finished, stopped]
        if total is not None:
            complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            callbacks.append(optuna.study.MaxTrialsCallback(max(total, complete + waiting)))
        if stop is None or not stop():
            try:
                study.optimize(objective, n_trials=max(trials, waiting), timeout=timeout, callbacks=callbacks)
            except Exception as exc:
                if stop is not None and stop():
                    raise KeyboardInterrupt from exc
                if not (isinstance(exc, ValueError) and _taken_over(study, untold)):
                    raise
                # This process was taken for dead (stopped, or paused past the heartbeats' grace
                # period) and the worker that resumed the study failed its trial, so Optuna
                # cannot tell it: this process's part of the search ends here, as if its trials
                # ran out, and the caller goes on with the study as the others left it.
        complete_trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = _best(model, complete_trials)
        everything = tuple(_candidate(model, trial) for trial in complete_trials)
    return SearchResult(best, tuple(candidates), study_name, len(complete_trials), everything)


def _budget_spent(trial: Trial, total: int) -> bool:
    """Whether `total` trials numbered before `trial` have run, run now or wait to (seeds): the
    storage numbers trials in the order they start, so workers that start trials at once agree
    on which of them run, and the study ends with exactly `total` (fewer only when one of them
    fails), where counting complete trials alone lets each other worker's running trial over."""
    state = optuna.trial.TrialState
    earlier = trial.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING, state.WAITING))
    return sum(t.number < trial.number for t in earlier) >= total


def _taken_over(study: optuna.Study, untold: Collection[int]) -> bool:
    """Whether a trial this process started and has not told (`untold`: their numbers) is finished
    all the same: another worker failed it, taking this process for dead."""
    if not untold:
        return False
    trials = study.get_trials(deepcopy=False)
    return any(trial.number in untold and trial.state.is_finished() for trial in trials)


def _fail_running(study: optuna.Study) -> None:
    """Mark every RUNNING trial of the study FAIL (their workers are gone)."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # A trial another process failed or finished meanwhile stays as it is.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def _enqueue_seeds(study: optuna.Study, model: CostModel, seeds: Sequence[DeviceMap]) -> int:
    """Enqueue the seeds the study has not evaluated or queued yet; how many trials now wait."""
    states = (
        optuna.trial.TrialState.WAITING,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.COMPLETE,
    )
    done = {trial.user_attrs.get(MAP_ATTR) for trial in study.get_trials(deepcopy=False, states=states)
            if SEED_ATTR in trial.user_attrs}  # fmt: skip
    for number, dmap in enumerate(seeds):
        text = _encode(model, dmap)
        if text not in done:
            done.add(text)
            study.enqueue_trial({}, user_attrs={SEED_ATTR: number, MAP_ATTR: text})
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _best(model: CostModel, complete: Sequence[FrozenTrial]) -> Candidate | None:
    """The fastest feasible of the study's complete trials, priced again."""
    feasible = [t for t in complete if t.value is not None and math.isfinite(t.value) and _feasible(t)]
    if not feasible:
        return None
    winner = min(feasible, key=lambda t: (t.value, t.number))
    dmap = _decode(model, winner.user_attrs[MAP_ATTR])
    return Candidate(f"trial {winner.number}", dmap, model.predict(dmap), trial=winner.number)


def _candidate(model: CostModel, trial: FrozenTrial) -> Candidate:
    """A complete trial as the worker that ran it made its candidate."""
    dmap = _decode(model, trial.user_attrs[MAP_ATTR])
    try:
        prediction: Prediction | None = model.predict(dmap)
    except ValueError:
        prediction = None
    return Candidate(f"trial {trial.number}", dmap, prediction, trial=trial.number)
