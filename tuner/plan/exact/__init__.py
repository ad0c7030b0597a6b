"""The exact optimum of the cost model: the fastest device map of the contiguous class that fits.

The class (DESIGN.md, "The exact optimum"). Units keep their execution order. Every GPU a map uses
holds one contiguous block of the units that are not offloaded (GPUs may be skipped; the order of
GPUs along the model is free unless ``devices_in_order``); any unit may instead be placed on
``cpu`` or ``disk``, from where its weights stream into the main device (the lowest GPU of the
map) on every call. Maps without a GPU (everything on ``cpu``/``disk``, running on the cpu) are in
the class too. Pins fix a unit's placement; excluded devices are never placed on (an excluded
``cpu`` also rules out the maps that run on the cpu); the units of a tied group share a placement.

The objective is `CostModel.predict` itself: least ``latency_s`` (prefill + decode steps x decode)
among the maps it calls ``feasible``, every term priced as ``predict`` prices it: compute where a
unit runs, weights streamed for offloaded units, a transfer for every edge whose ends run on
different devices (long-range edges and the model's inputs, which live on the main device,
included), and per device resident weights + offloaded buffers + KV cache + the *largest* working
set + runtime overhead against the limit.

Method: a label-setting dynamic programme over the units in execution order (the
resource-constrained shortest path technique of Desrochers and Soumis, "A generalized permanent
labelling algorithm for the shortest path problem with time windows", INFOR 26(3), 1988), with a
bitmask over the GPUs used (Held and Karp, "A dynamic programming approach to sequencing
problems", J. SIAM 10(1), 1962) so that every order of GPUs is tried, and branch and bound.

* One sub-problem per main device M (each GPU, and the cpu for maps without one): M fixes where
  offloaded units run and where the inputs live, so every edge is priced when its consumer is.
* A state after unit i: the set of GPUs used (bitmask; not needed with ``devices_in_order``), the
  GPU of the open block, the device of every unit with an edge past i (the previous unit, and
  producers such as ``rotary_emb`` or a T5 encoder's output that feed every later layer), and
  the placement of every tied group still open.
* A label of a state: latency so far; main device's running sum and running max of working
  sets; cpu and disk loads; the open block's running sum and max. Resources only grow along a
  path, so a label no worse in latency and in every resource dominates: the Pareto set of each
  state is exact. A resource that no placement of the rest could overflow is dropped (so more
  labels merge), as is a device whose limit holds the whole model.
* Exact reductions: GPUs that are interchangeable (same limit, overhead and unit timings, link
  table unchanged by swapping them) open in index order only, and a main device is skipped when
  a lower twin exists. Branch and bound: a label is dropped when its latency plus an admissible
  bound on the rest reaches the best complete map known, which narrow beam passes of the same
  programme (12, then 96, then 768 labels per unit until one finds a map) provide first. The
  bounds, each a relaxation: every unit at its cheapest placement on a GPU still open to it, edges
  from producers already placed priced, the rest of an open tied group at its forced placement;
  the most common unit kind placed greedily in whole units on the cheapest devices with room,
  cpu and disk included; the GPUs' room pooled, what cannot fit streaming at the least price per
  byte (a fractional knapsack), its weights filling the cpu before the disk; and a Lagrangian
  relaxation of every device's room at the dual prices of a transportation LP (Fisher, "The
  Lagrangian relaxation method for solving integer programming problems", Management Science
  27(1), 1981).

Complexity: O(L x 2^K x K x P) states for L units, K GPUs and P tuples of devices of open
producers (1 to K^2 in real models), each with a Pareto set of labels and O(K) moves per label.
Without memory pressure a set holds at most the O(L) start points of the open block. With it,
choosing which units stream is a 0/1 knapsack, so the problem is NP-hard and no polynomial exact
method exists: the sets are then pseudo-polynomial (distinct byte sums), and small when units
repeat, since identical decoder layers give identical labels that merge. Meant for up to 8 GPUs
(2^K states), far faster with interchangeable GPUs; slowest when much must stream and many maps
tie (which layers stream is then nearly free), see benchmarks/exact_speed.py. Sums run in a
different order than in ``predict``; the map returned is priced by ``predict`` itself and is
optimal to ~1e-12 relative.

`brute_force` enumerates every map of the same class and prices each with ``predict``: the
yardstick for tiny instances.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.core.devices import OFFLOAD
from tuner.core.devices import device_order
from tuner.core.devices import is_gpu
from tuner.core.devices import to_key
from tuner.core.domain import INPUT
from tuner.core.domain import DeviceMap
from tuner.core.domain import Phase
from tuner.core.domain import Prediction

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["Solution", "solve", "brute_force"]

_INF = math.inf
#: Relative slack when pruning against the best map found: sums in a different order than
#: ``predict`` differ in the last bits, never by this much.
_PRUNE_RTOL = 1e-12
#: Labels kept per unit in the narrow passes that find a good map before the exact pass.
_BEAMS = (12, 96, 768)


@dataclass(frozen=True)
class Solution:
    """The optimal map of the class and its price under ``CostModel.predict``."""

    device_map: DeviceMap
    prediction: Prediction

    @property
    def latency_s(self) -> float:
        return self.prediction.latency_s


def _check_arguments(
    model: CostModel, pins: Mapping[str, str], exclude: Collection[str]
) -> tuple[dict[str, str], frozenset[str]]:
    names = set(model.graph.unit_names)
    fixed = {}
    for unit, place in pins.items():
        if unit not in names:
            raise ValueError(f"pin names unknown unit {unit!r}")
        try:
            fixed[unit] = to_key(place)
        except ValueError as exc:
            raise ValueError(f"unit {unit!r}: {exc}") from None
    excluded = frozenset(to_key(device) for device in exclude)
    return fixed, excluded


def _accelerators(model: CostModel, excluded: frozenset[str]) -> list[str]:
    """Devices a block may live on: profiled compute devices other than the cpu, by rank."""
    return sorted((d for d in model.compute_devices if d != "cpu" and d not in excluded), key=device_order)


def _offload_places(excluded: frozenset[str]) -> list[str]:
    return [place for place in OFFLOAD if place not in excluded]


def _tie_groups(model: CostModel) -> list[list[int]]:
    """Tied groups as sorted unit indices, overlapping groups merged."""
    return [group for group in model.graph.placement_groups() if len(group) > 1]


# -- brute force ----------------------------------------------------------------------------


def _in_class(placements: tuple[str, ...], accelerators: set[str], in_order: bool) -> bool:
    """Each accelerator holds one run of the non-offloaded units (in rank order if asked)."""
    runs: list[str] = []
    for place in placements:
        if place in accelerators and (not runs or runs[-1] != place):
            runs.append(place)
    if len(set(runs)) != len(runs):
        return False
    return not in_order or runs == sorted(runs, key=device_order)


def brute_force(
    model: CostModel,
    *,
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    devices_in_order: bool = False,
    max_maps: int = 2_000_000,
) -> Solution | None:
    """Every map of `solve`'s class priced by ``predict``: the yardstick, for tiny models only.

    Raises:
        ValueError: the class has more than `max_maps` candidate placements to enumerate.
    """
    fixed, excluded = _check_arguments(model, pins, exclude)
    names = model.graph.unit_names
    accelerators = _accelerators(model, excluded)
    places = accelerators + _offload_places(excluded)
    choices = []
    for name in names:
        if name in fixed:
            if fixed[name] not in places:
                return None
            choices.append([fixed[name]])
        else:
            choices.append(places)
    if math.prod(len(c) for c in choices) > max_maps:
        raise ValueError(f"brute force over more than {max_maps} maps; use solve()")
    groups = _tie_groups(model)
    gpu_set = set(accelerators)
    best: Solution | None = None
    for combo in itertools.product(*choices):
        if any(len({combo[i] for i in group}) > 1 for group in groups):
            continue
        if not _in_class(combo, gpu_set, devices_in_order):
            continue
        if "cpu" in excluded and not any(place in gpu_set for place in combo):
            continue
        dmap = DeviceMap(tuple(zip(names, combo, strict=True)))
        try:
            prediction = model.predict(dmap)
        except ValueError:
            continue
        if prediction.feasible and (best is None or prediction.latency_s < best.prediction.latency_s):
            best = Solution(dmap, prediction)
    return best


# -- the dynamic programme ------------------------------------------------------------------


class _Instance:
    """Plain per-unit arrays, combined over phases (prefill + decode steps x decode)."""

    def __init__(self, model: CostModel, fixed: dict[str, str], excluded: frozenset[str], in_order: bool):
        self.model = model
        self.in_order = in_order
        self.names = model.graph.unit_names
        n = self.n = len(self.names)
        index = {name: i for i, name in enumerate(self.names)}
        self.weights = [(phase, 1.0 if phase is Phase.PREFILL else float(model.workload.decode_steps))
                        for phase in model.phases]  # fmt: skip
        self.acc = _accelerators(model, excluded)
        a = len(self.acc)
        self.cpu, self.disk = a, a + 1
        self.keys = [*self.acc, "cpu", "disk"]
        allowed = set(range(a)) | {self.keys.index(p) for p in _offload_places(excluded)}
        self.cpu_main = "cpu" in model.compute_devices and "cpu" not in excluded
        # placements each unit may take (pins); None marks a pin outside the class
        self.allowed: list[set[int]] | None = []
        for name in self.names:
            if name in fixed:
                key = fixed[name]
                if key not in self.keys or self.keys.index(key) not in allowed:
                    self.allowed = None
                    break
                self.allowed.append({self.keys.index(key)})
            else:
                self.allowed.append(set(allowed))
        pinned_gpus = {self.keys.index(fixed[nm]) for nm in fixed if fixed[nm] in self.acc}
        units = model.graph.units
        self.param = [u.param_bytes for u in units]
        self.buffer = [u.buffer_bytes for u in units]
        self.cache = list(model.cache_bytes)
        self.work = list(model.working_set_bytes)
        self.calls = {phase: model.calls(phase) for phase, _ in self.weights}
        compute_keys = [*self.acc, "cpu"] if self.cpu_main else list(self.acc)
        self.compute: dict[int, list[float]] = {}
        for key in compute_keys:
            rows = [(w, model.compute_seconds(key, phase)) for phase, w in self.weights]
            self.compute[self.keys.index(key)] = [sum(w * row[u] for w, row in rows) for u in range(n)]
        # edges, grouped by the unordered pair of units they join
        pairs: dict[tuple[int, int], list[tuple[bool, int, int]]] = {}
        self.inputs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for edge in model.graph.edges:
            consumer = index[edge.consumer]
            if edge.producer == INPUT:
                self.inputs[consumer].append((edge.prefill_bytes, edge.decode_bytes))
                continue
            producer = index[edge.producer]
            if producer == consumer:
                continue
            lo, hi = min(producer, consumer), max(producer, consumer)
            nbytes = (producer < consumer, edge.prefill_bytes, edge.decode_bytes)
            pairs.setdefault((lo, hi), []).append(nbytes)
        self.pair_edges = pairs
        last = [-1] * n
        self.before: list[list[int]] = [[] for _ in range(n)]
        for lo, hi in sorted(pairs):
            last[lo] = max(last[lo], hi)
            self.before[hi].append(lo)
        # units whose edges reach past position i, and how the tuple of their devices evolves
        self.open_after = [[j for j in range(i + 1) if last[j] > i] for i in range(n)]
        self.x_recipe: list[tuple[int, ...]] = []
        self.x_lookup: list[list[tuple[int, tuple[int, int]]]] = []
        for i in range(n):
            prev = {j: k for k, j in enumerate(self.open_after[i - 1])} if i else {}
            self.x_recipe.append(tuple(-1 if j == i else prev[j] for j in self.open_after[i]))
            self.x_lookup.append([(prev[j], (j, i)) for j in self.before[i]])
        # tied groups: which are open after each position, and how their tuple evolves
        self.ties = _tie_groups(model)
        tie_of = {u: g for g, members in enumerate(self.ties) for u in members}
        open_ties = [[g for g, m in enumerate(self.ties) if m[0] <= i < m[-1]] for i in range(n)]
        self.open_ties = open_ties
        self.t_check: list[int] = []  # index into the previous tuple that u must match, or -1
        self.t_recipe: list[tuple[int, ...]] = []
        for i in range(n):
            prev_t = {g: k for k, g in enumerate(open_ties[i - 1])} if i else {}
            g = tie_of.get(i, -1)
            self.t_check.append(prev_t[g] if g in prev_t else -1)
            self.t_recipe.append(tuple(-1 if h == g and h not in prev_t else prev_t[h] for h in open_ties[i]))
        self.pinned_gpus = pinned_gpus
        self._edge_memo: dict[tuple[int, int, int, int], float] = {}
        self._classes = self._interchangeable()

    # -- prices ---------------------------------------------------------------------------

    def transfer(self, src: int, dst: int, nbytes: tuple[int, int]) -> float:
        if src == dst:
            return 0.0
        total = 0.0
        for k, (_, w) in enumerate(self.weights):
            if w:
                try:
                    total += w * self.model.transfer_seconds(self.keys[src], self.keys[dst], nbytes[k])
                except ValueError:
                    return _INF
        return total

    def pair_cost(self, pair: tuple[int, int], e_lo: int, e_hi: int) -> float:
        memo_key = (pair[0], pair[1], e_lo, e_hi)
        cost = self._edge_memo.get(memo_key)
        if cost is None:
            cost = 0.0
            if e_lo != e_hi:
                for forward, pb, db in self.pair_edges[pair]:
                    src, dst = (e_lo, e_hi) if forward else (e_hi, e_lo)
                    cost += self.transfer(src, dst, (pb, db))
            self._edge_memo[memo_key] = cost
        return cost

    def stream(self, u: int, place: int, main: int) -> float:
        total = 0.0
        for phase, w in self.weights:
            calls = self.calls[phase][u]
            if calls and w:
                try:
                    total += (
                        w * calls * self.model.stream_seconds(u, self.keys[place], self.keys[main], phase)
                    )
                except ValueError:
                    return _INF
        return total

    # -- symmetry ---------------------------------------------------------------------------

    def _interchangeable(self) -> list[int]:
        """Class representative of each accelerator: the lowest one it may be swapped with."""
        rep = list(range(len(self.acc)))
        for j, key in enumerate(self.acc):
            if j in self.pinned_gpus or not is_gpu(key):
                continue
            for i in range(j):
                candidate = rep[i] == i and i not in self.pinned_gpus and is_gpu(self.acc[i])
                if candidate and self.model.interchangeable(self.acc[i], key):
                    rep[j] = i
                    break
        return rep

    def mains(self) -> list[int]:
        """Main devices to try: accelerators without a lower interchangeable twin, then the cpu."""
        found = [m for m in range(len(self.acc)) if self._classes[m] == m]
        if self.cpu_main:
            found.append(self.cpu)
        return found

    def predecessors(self, main: int) -> list[int]:
        """For each GPU, the GPU of its class that must be opened first (free order), else -1."""
        pred = [-1] * len(self.acc)
        if self.in_order:
            return pred
        last_of: dict[int, int] = {}
        for g in range(main + 1, len(self.acc)):
            rep = self._classes[g]
            pred[g] = last_of.get(rep, -1)
            last_of[rep] = g
        return pred


_BLOCK, _OFFLOAD, _RESIDENT = 0, 1, 2


class _Problem:
    """The sub-problem with a fixed main device: options per unit and the tables of the bounds.

    An option of a unit is ``(place, exec, price, kind, bytes, work)``: where it is placed, where
    it executes, its compute and streaming seconds, whether it opens/extends a GPU block
    (``_BLOCK``), streams from cpu/disk (``_OFFLOAD``) or sits on the cpu as the main device
    (``_RESIDENT``), the bytes it adds to the sum of its device, and its working set there.
    """

    def __init__(self, inst: _Instance, main: int):
        self.inst = inst
        self.main = main
        model = inst.model
        n = inst.n
        self.gpu_main = gpu_main = main != inst.cpu
        self.gpus = gpus = list(range(main, len(inst.acc))) if gpu_main else []
        self.all_gpus = sum(1 << g for g in gpus)
        self.sizes = [p + b + c for p, b, c in zip(inst.param, inst.buffer, inst.cache, strict=True)]
        self.limit = {d: model.limit(key) for d, key in enumerate(inst.keys)}
        self.over = {d: model.overhead(key) for d, key in enumerate(inst.keys)}
        self.cap = {d: max(0, self.limit[d] - self.over[d]) for d in (gpus or [main])}
        # a device whose limit holds everything the model could put there is not tracked
        everything = sum(self.sizes)
        widest = max((w + p for w, p in zip(inst.work, inst.param, strict=True)), default=0)
        self.track = {d: self.over[d] + everything + widest > self.limit[d] for d in gpus}
        self.track_main = self.over[main] + everything + widest > self.limit[main]
        self.track_cpu = gpu_main and self.over[inst.cpu] + sum(inst.param) > self.limit[inst.cpu]
        self.track_disk = self.over[inst.disk] + sum(inst.param) > self.limit[inst.disk]
        self.pred = inst.predecessors(main) if gpu_main else []
        self.options: list[list[tuple[int, int, float, int, int, int]]] = []
        self.input_cost: list[dict[int, float]] = []  # unit -> exec device -> seconds of its inputs
        for u in range(n):
            streamed = inst.buffer[u] + inst.cache[u]
            opts = []
            for place in sorted(inst.allowed[u]) if inst.allowed is not None else []:
                if place < len(inst.acc):
                    if place in gpus:
                        price = inst.compute[place][u]
                        opts.append((place, place, price, _BLOCK, self.sizes[u], inst.work[u]))
                elif not gpu_main and place == inst.cpu:
                    opts.append((place, main, inst.compute[main][u], _RESIDENT, self.sizes[u], inst.work[u]))
                else:
                    price = inst.compute[main][u] + inst.stream(u, place, main)
                    opts.append((place, main, price, _OFFLOAD, streamed, inst.work[u] + inst.param[u]))
            opts = [o for o in opts if o[2] < _INF]
            self.options.append(opts)
            execs = {o[1] for o in opts}
            self.input_cost.append({e: sum(inst.transfer(main, e, b) for b in inst.inputs[u]) for e in execs})
        self.price = [[o[2] + self.input_cost[u][o[1]] for o in opts] for u, opts in enumerate(self.options)]
        # Lower bounds on what units u.. add to a state's latency (edges among them taken free):
        # 1. each unit at its cheapest placement;
        self.rest = [0.0] * (n + 1)
        for u in range(n - 1, -1, -1):
            self.rest[u] = self.rest[u + 1] + min(self.price[u], default=_INF)
        # 2. each unit on a GPU still open to it, paying its edges from producers already placed;
        self._structure_tables()
        # 3. the most common kind of unit (a decoder layer) placed greedily where it is cheapest,
        #    whole units into the room each device has left, the others at their cheapest;
        self._dominant_tables()
        # 4. the GPUs' room pooled: what does not fit streams, cheapest per byte first (fractional
        #    knapsack), its weights filling the cpu before the dearer disk;
        self._pooled_tables()
        # 5. the Lagrangian relaxation of every device's room, at prices from a transportation LP.
        self._lagrange_tables()

    # -- bound 2: structure -------------------------------------------------------------------

    def _structure_tables(self) -> None:
        inst = self.inst
        n = inst.n
        self.on_gpu: list[dict[int, float]] = []  # unit -> GPU -> cheapest price of a block there
        self.anywhere: list[float] = []  # unit -> cheapest price running on the main device
        for u in range(n):
            on_gpu: dict[int, float] = {}
            anywhere = _INF
            for (place, _, _, kind, _, _), price in zip(self.options[u], self.price[u], strict=True):
                if kind == _BLOCK:
                    on_gpu[place] = min(on_gpu.get(place, _INF), price)
                else:
                    anywhere = min(anywhere, price)
            self.on_gpu.append(on_gpu)
            self.anywhere.append(anywhere)
        # producers whose edges skip units (rotary_emb, an encoder's output): their device is
        # known to a state long before their consumers are placed
        self.long_range = {lo for lo, hi in inst.pair_edges if hi >= lo + 2}
        self.feeds: list[list[tuple[int, tuple[int, int]]]] = [[] for _ in range(n)]
        for lo, hi in inst.pair_edges:
            if lo in self.long_range:
                self.feeds[hi].append((lo, (lo, hi)))
        kinds: dict[tuple, int] = {}
        self.kind = [
            kinds.setdefault(
                (tuple(sorted(self.on_gpu[u].items())), self.anywhere[u],
                 tuple((lo, tuple(inst.pair_edges[pair])) for lo, pair in sorted(self.feeds[u]))),
                len(kinds),
            )
            for u in range(n)
        ]  # fmt: skip
        self._suffix: dict[tuple, list[float]] = {}
        self._unit_bound: dict[tuple, float] = {}
        self._rooms: dict[tuple[int, int, int], tuple] = {}

    def structure_bound(self, v: int, avail: int, known: tuple[tuple[int, int], ...]) -> float:
        """Least price of units v.. when blocks may only open on the GPUs of bitmask `avail` and
        the long-range producers in `known` run where it says."""
        n = self.inst.n
        ctx = (avail, known)
        table = self._suffix.get(ctx)
        if table is None:
            table = self._suffix[ctx] = [_INF] * n + [0.0]
        if v == n or table[v] < _INF:
            return table[v]
        where = dict(known)
        top = v
        while top + 1 < n and table[top + 1] == _INF:
            top += 1
        for w in range(top, v - 1, -1):
            memo_key = (self.kind[w], ctx)
            price = self._unit_bound.get(memo_key)
            if price is None:
                feeds = [(where[lo], pair) for lo, pair in self.feeds[w] if lo in where]
                price = self.anywhere[w]
                if price < _INF:
                    for e, pair in feeds:
                        price += self.inst.pair_cost(pair, e, self.main)
                for g, on_g in self.on_gpu[w].items():
                    if avail >> g & 1 and on_g < price:
                        for e, pair in feeds:
                            on_g += self.inst.pair_cost(pair, e, g)
                        price = min(price, on_g)
                self._unit_bound[memo_key] = price
            table[w] = table[w + 1] + price
        return table[v]

    # -- bound 3: the dominant kind of unit ---------------------------------------------------

    def _dominant_tables(self) -> None:
        inst = self.inst
        n = inst.n
        kinds: list[tuple] = []
        for u in range(n):
            on_device: dict[int, float] = {}
            streamed: dict[int, float] = {}
            for (place, ex, _, kind, _, _), price in zip(self.options[u], self.price[u], strict=True):
                if kind == _OFFLOAD:
                    streamed[place] = min(streamed.get(place, _INF), price)
                else:
                    on_device[ex] = min(on_device.get(ex, _INF), price)
            kinds.append((self.sizes[u], inst.work[u], tuple(sorted(on_device.items())),
                          tuple(sorted(streamed.items())), inst.param[u]))  # fmt: skip
        # per suffix: the kind with most units, how many, and the cheapest price of the others
        self.dominant: list[tuple | None] = [None] * (n + 1)
        self.dominant_count = [0] * (n + 1)
        self.others_rest = [0.0] * (n + 1)
        counts: dict[tuple, int] = {}
        for u in range(n - 1, -1, -1):
            counts[kinds[u]] = counts.get(kinds[u], 0) + 1
            dominant = max(counts, key=counts.__getitem__)
            cheapest = min((c for _, c in dominant[2] + dominant[3]), default=_INF)
            self.dominant[u] = dominant
            self.dominant_count[u] = counts[dominant]
            self.others_rest[u] = self.rest[u] - counts[dominant] * cheapest if self.rest[u] < _INF else _INF

    def greedy_dominant(self, u: int, rooms: list[tuple[float, int]]) -> float:
        """Least price of the dominant units of u.. given, per device or offload place, the
        price of one unit there and how many fit; inf when they cannot all fit."""
        left = self.dominant_count[u]
        total = 0.0
        for price, fits in sorted(rooms):
            take = fits if fits < left else left
            total += take * price
            left -= take
            if not left:
                return total
        return _INF

    # -- bound 4: pooled room -----------------------------------------------------------------

    def _pooled_tables(self) -> None:
        """Per suffix: the bytes its units need on the GPUs at their cheapest placement, and the
        cheapest way (seconds per byte saved, best first) to save bytes by streaming some of
        them. Variant 0 pools the main device with the GPUs (a streamed unit still leaves its
        buffers and cache there); variant 1 leaves the main device out (its block is closed)."""
        inst = self.inst
        n = inst.n
        self.need = ([0] * (n + 1), [0] * (n + 1))
        empty: tuple[list[int], list[float], list[float]] = ([], [], [])
        self.saving = ([empty] * (n + 1), [empty] * (n + 1))
        for variant in (0, 1):
            need, saving = self.need[variant], self.saving[variant]
            by_ratio: dict[float, list[float]] = {}
            for u in range(n - 1, -1, -1):
                pairs = list(zip(self.options[u], self.price[u], strict=True))
                resident = [p for o, p in pairs if o[3] != _OFFLOAD]
                streamed = [p for o, p in pairs if o[3] == _OFFLOAD]
                bytes_off = 0 if variant else inst.buffer[u] + inst.cache[u]
                if resident and (not streamed or min(resident) <= min(streamed)):
                    need[u] = need[u + 1] + self.sizes[u]
                    if streamed and self.sizes[u] > bytes_off:
                        extra = min(streamed) - min(resident)
                        entry = by_ratio.setdefault(extra / (self.sizes[u] - bytes_off), [0, 0.0])
                        entry[0] += self.sizes[u] - bytes_off
                        entry[1] += extra
                else:
                    need[u] = need[u + 1] + bytes_off
                cum_bytes, cum_cost, ratios = [], [], []
                total_bytes, total_cost = 0, 0.0
                for ratio in sorted(by_ratio):
                    total_bytes += int(by_ratio[ratio][0])  # bytes, kept as a float beside seconds
                    total_cost += by_ratio[ratio][1]
                    cum_bytes.append(total_bytes)
                    cum_cost.append(total_cost)
                    ratios.append(ratio)
                saving[u] = (cum_bytes, cum_cost, ratios)
        # where streamed weights go: per suffix, the fewest weight bytes per byte saved on the
        # GPUs, the weights that stream at their cheapest placement (from the cpu), and the least
        # extra price per byte of reading from disk instead of the cpu
        self.weight_ratio = ([1.0] * (n + 1), [1.0] * (n + 1))
        self.base_streamed = [0] * (n + 1)
        self.disk_surcharge = [_INF] * (n + 1)
        for u in range(n - 1, -1, -1):
            pairs = list(zip(self.options[u], self.price[u], strict=True))
            streamed_at = {o[0]: p for o, p in pairs if o[3] == _OFFLOAD}
            resident = [p for o, p in pairs if o[3] != _OFFLOAD]
            param = inst.param[u]
            self.weight_ratio[0][u] = self.weight_ratio[0][u + 1]
            self.weight_ratio[1][u] = self.weight_ratio[1][u + 1]
            if streamed_at and param:
                self.weight_ratio[1][u] = min(self.weight_ratio[1][u], param / self.sizes[u])
            base = 0
            if streamed_at and (not resident or min(streamed_at.values()) < min(resident)):
                if streamed_at.get(inst.cpu, _INF) <= min(streamed_at.values()):
                    base = param
            self.base_streamed[u] = self.base_streamed[u + 1] + base
            surcharge = self.disk_surcharge[u + 1]
            if param and inst.cpu in streamed_at and inst.disk in streamed_at:
                surcharge = min(surcharge, (streamed_at[inst.disk] - streamed_at[inst.cpu]) / param)
            self.disk_surcharge[u] = surcharge
        # the bytes a device can really fill: some units of the suffix's most common size plus
        # at most all the others, so room beyond the last whole unit of that size is wasted
        self.common = [(0, 0, 0)] * (n + 1)  # (size, bytes of the others, their streamed bytes)
        self.least_work = [0] * (n + 1)
        by_size: dict[int, list[int]] = {}
        for u in range(n - 1, -1, -1):
            tally = by_size.setdefault(self.sizes[u], [0, 0])
            tally[0] += self.sizes[u]
            tally[1] += inst.buffer[u] + inst.cache[u]
            size = max(by_size, key=lambda k: by_size[k][0])
            self.common[u] = (size, sum(v[0] for v in by_size.values()) - by_size[size][0], by_size[size][1])
            self.least_work[u] = min(inst.work[u], self.least_work[u + 1]) if u < n - 1 else inst.work[u]
        # streaming `excess` bytes needs units whose weights pass through the main device's
        # working set: their working sets ascending, with the bytes streaming them saves
        self.stream_work: list[tuple[list[int], list[int]]] = [([], [])] * (n + 1)
        for u in range(n - 1, -1, -1):
            rows = sorted((inst.work[v] + inst.param[v], inst.param[v]) for v in range(u, n)
                          if inst.param[v] and any(o[3] == _OFFLOAD for o in self.options[v]))  # fmt: skip
            works: list[int] = []
            cum: list[int] = []
            total = 0
            for work, param in rows:
                total += param
                if works and works[-1] == work:
                    cum[-1] = total
                else:
                    works.append(work)
                    cum.append(total)
            self.stream_work[u] = (works, cum)
        # the most the rest can add, to tell when a device can no longer overflow:
        # (bytes, streamed bytes, weights, largest working set, largest streamed working set)
        self.future = [(0, 0, 0, 0, 0)] * (n + 1)
        for u in range(n - 1, -1, -1):
            a, b, c, d, e = self.future[u + 1]
            self.future[u] = (a + self.sizes[u], b + inst.buffer[u] + inst.cache[u], c + inst.param[u],
                              max(d, inst.work[u]), max(e, inst.work[u] + inst.param[u]))  # fmt: skip

    def streaming_at_least(self, variant: int, u: int, excess: int) -> float:
        """Least extra seconds for units u.. to free `excess` bytes of GPU memory (fractional)."""
        cum_bytes, cum_cost, ratios = self.saving[variant][u]
        if not cum_bytes or excess > cum_bytes[-1]:
            return _INF
        k = bisect.bisect_left(cum_bytes, excess)
        if k == 0:
            return excess * ratios[0]
        return cum_cost[k - 1] + (excess - cum_bytes[k - 1]) * ratios[k]

    # -- bound 5: Lagrangian ------------------------------------------------------------------

    def _lagrange_tables(self) -> None:
        """For any prices lam >= 0, sum_u min_o (price_o + lam[dev_o] bytes_o) - sum_d lam[d]
        room_d is a lower bound. Variant 1 is for states whose main block is closed: no block
        options there, and the main device's room priced at 0 (only streamed units' buffers and
        cache can still go there)."""
        n = self.inst.n
        main = self.main
        self.lam = lam = self._prices()
        self.lagrange = ([0.0] * (n + 1), [0.0] * (n + 1))
        for variant in (0, 1):
            table = self.lagrange[variant]
            for u in range(n - 1, -1, -1):
                cheapest = min(
                    (p + (0.0 if variant and o[1] == main else lam[o[1]]) * o[4]
                     for o, p in zip(self.options[u], self.price[u], strict=True)
                     if not (variant and o[3] == _BLOCK and o[0] == main)),
                    default=_INF,
                )  # fmt: skip
                table[u] = table[u + 1] + cheapest

    def _prices(self) -> dict[int, float]:
        """Capacity prices (seconds per byte) that make the Lagrangian bound tight at the root:
        the optimal duals of the transportation LP that sends every unit's bytes to a device of
        limited room or, at its streaming price, to an unlimited sink (streaming's small charge
        on the main device relaxed away), by successive shortest paths (Ahuja, Magnanti and
        Orlin, "Network Flows", 1993, ch. 9). Any prices give a valid bound; these a tight one."""
        cap = self.cap
        lam = dict.fromkeys(cap, 0.0)
        kinds: dict[tuple, int] = {}
        for u, opts in enumerate(self.options):
            row = tuple((o[1], o[3] == _OFFLOAD, o[4], p) for o, p in zip(opts, self.price[u], strict=True))
            kinds[row] = kinds.get(row, 0) + 1
        # nodes: 0 source, 1 sink, 2 streaming, then devices, then kinds of unit
        devices = list(cap)
        node_of = {d: 3 + k for k, d in enumerate(devices)}
        graph: list[list[list]] = [[] for _ in range(3 + len(devices))]  # arc: [to, room, cost, reverse]

        def arc(a: int, b: int, room: float, cost: float) -> None:
            graph[a].append([b, room, cost, len(graph[b])])
            graph[b].append([a, 0, -cost, len(graph[a]) - 1])

        supply = 0
        for row, count in kinds.items():
            size = max((w for _, off, w, _ in row if not off), default=0)
            if size <= 0:
                continue
            node = len(graph)
            graph.append([])
            arc(0, node, count * size, 0.0)
            supply += count * size
            for ex, off, _, price in row:
                arc(node, 2 if off else node_of[ex], _INF, price / size)
        arc(2, 1, _INF, 0.0)
        for d in devices:
            arc(node_of[d], 1, cap[d], 0.0)
        sent = 0
        while sent < supply:
            dist, back = _shortest_paths(graph, 0)
            if dist[1] == _INF:
                return lam  # even the relaxation cannot place everything: no prices help
            push, node = supply - sent, 1
            while node != 0:
                a, k = back[node]
                push = min(push, graph[a][k][1])
                node = a
            node = 1
            while node != 0:
                a, k = back[node]
                edge = graph[a][k]
                edge[1] -= push
                graph[edge[0]][edge[3]][1] += push
                node = a
            sent += push
        potential, _ = _shortest_paths(graph, None)  # a feasible potential gives the duals
        for d in devices:
            lam[d] = max(0.0, potential[1] - potential[node_of[d]])
        return lam

    # -- the search ---------------------------------------------------------------------------

    def root_bound(self) -> float:
        """A lower bound on every map of this sub-problem."""
        n = self.inst.n
        bound = max(self.rest[0], self.lagrange[0][0] - sum(self.lam[d] * self.cap[d] for d in self.cap))
        kind = self.dominant[0] if n else None
        if kind is not None:
            size, work, prices, streamed, param = kind
            rooms = [(c, max(0, self.cap[d] - work) // size if size else n) for d, c in prices]
            for place, c in streamed:
                tracked = self.track_cpu if place == self.inst.cpu else self.track_disk
                room = self.limit[place] - self.over[place]
                rooms.append((c, max(0, room) // param if tracked and param else n))
            bound = max(bound, self.others_rest[0] + self.greedy_dominant(0, rooms))
        return bound

    def _state_context(self, key: tuple, u: int) -> tuple | None:
        """What the bounds need of a state after unit u, computed once per state; None for a
        state no map can complete."""
        used, cur, xs, ties = key
        v = u + 1
        rooms_key = (used, cur, v)
        rooms = self._rooms.get(rooms_key)
        if rooms is None:
            rooms = self._rooms[rooms_key] = self._room_context(used, cur, v)
        avail = rooms[0]
        open_after = self.inst.open_after[u]
        known = tuple((j, xs[k]) for k, j in enumerate(open_after) if j in self.long_range)
        structure = self.structure_bound(v, avail, known)
        if ties:
            # the rest of an open tied group must take the placement its first unit took ...
            forced = {}
            for group, place in zip(self.inst.open_ties[u], ties, strict=True):
                for w in self.inst.ties[group]:
                    if w > u:
                        options = zip(self.options[w], self.price[w], strict=True)
                        forced[w] = min((p for o, p in options if o[0] == place), default=_INF)
            bounds = self._unit_bound
            structure += sum(max(0.0, forced[w] - bounds[(self.kind[w], (avail, known))]) for w in forced)
            for group, place in zip(self.inst.open_ties[u], ties, strict=True):
                # ... and on a GPU, that block stays open (the only one) until the group's last unit
                if place < len(self.inst.acc):
                    if place != cur:
                        return None
                    last, only = self.inst.ties[group][-1] + 1, (1 << place, known)
                    through = self.structure_bound(v, *only) - self.structure_bound(last, *only)
                    through += sum(max(0.0, forced[w] - bounds[(self.kind[w], only)])
                                   for w in self.inst.ties[group] if w > u)  # fmt: skip
                    structure = max(structure, through + self.structure_bound(last, avail, known))
        if structure == _INF:
            return None
        return (structure, *rooms[1:])

    def _room_context(self, used: int, cur: int, v: int) -> tuple:
        """The parts of a state's bounds that depend on its GPUs alone: GPUs still available,
        their room (in bytes, and in dominant units at their price), the Lagrangian base."""
        main, cap, lam = self.main, self.cap, self.lam
        if self.inst.in_order:
            avail = self.all_gpus if cur < 0 else self.all_gpus & ~((1 << cur) - 1)
            free = [g for g in self.gpus if g != main and g > cur]
        else:
            avail = self.all_gpus & ~used | (1 << cur if cur >= 0 else 0)
            free = [g for g in self.gpus if g != main and g != cur and not used >> g & 1]
        open_other = cur >= 0 and cur != main
        main_used = cur >= 0 if self.inst.in_order else bool(used >> main & 1)
        main_closed = self.gpu_main and open_other and main_used
        variant = 1 if main_closed else 0
        size, others, _ = self.common[v]
        least = self.least_work[v]
        fills = [_fillable(max(0, cap[g] - least), size, others) for g in free]
        lagrange = self.lagrange[variant][v] - sum(lam[g] * f for g, f in zip(free, fills, strict=True))
        rooms: list[tuple[float, int]] = []
        dom_main = dom_cur = _INF
        kind = self.dominant[v]
        if kind is not None:
            prices = dict(kind[2])
            for g in free:
                if g in prices:
                    rooms.append((prices[g], max(0, cap[g] - kind[1]) // kind[0] if kind[0] else self.inst.n))
            dom_main = _INF if main_closed else prices.get(main, _INF)
            dom_cur = prices.get(cur, _INF) if open_other else _INF
        future_sizes, future_streamed = self.future[v][0], self.future[v][1]
        return (
            avail, lagrange, sum(fills), rooms, main_closed, variant, self.need[variant][v],
            open_other, lam[cur] if open_other else 0.0, cap[cur] if open_other else 0, dom_main, dom_cur,
            future_streamed if main_closed else future_sizes,
            future_sizes + self.over[cur] - self.limit[cur] if open_other else 0,
            sum(fits for _, fits in rooms),
        )  # fmt: skip

    def run(self, bound: float, beam: int = 0) -> tuple[float, list[int]] | None:
        """The best map of this sub-problem cheaper than `bound`, as (latency, placements).

        With `beam`, only that many labels (the most promising by their bound) survive each
        unit: a fast heuristic pass whose result bounds the exact one. A label is pruned only
        when a bound shows every completion reaches `bound`; without `bound` (inf) by dominance
        and memory alone.
        """
        inst = self.inst
        n = inst.n
        main, gpu_main, in_order = self.main, self.gpu_main, inst.in_order
        limit, over, track, pred, cap = self.limit, self.over, self.track, self.pred, self.cap
        param = inst.param
        track_main, track_cpu, track_disk = self.track_main, self.track_cpu, self.track_disk
        main_room, cap_main, lam_main = limit[main] - over[main], cap[main], self.lam[main]
        cpu, cpu_limit, cpu_over = inst.cpu, limit[inst.cpu], over[inst.cpu]
        disk_limit, disk_over = limit[inst.disk], over[inst.disk]
        cutoff = bound * (1 - _PRUNE_RTOL) if bound < _INF else _INF
        if self.root_bound() >= cutoff:
            return None
        # a label: (latency, main sum, main max, cpu load, disk load, block sum, block max,
        # parent label, placement, promise); -1 marks a resource that can no longer overflow
        layer: dict[tuple, list[tuple]] = {(0, -1, (), ()): [(0.0, 0, 0, 0, 0, 0, 0, None, -1, 0.0)]}
        for u in range(n):
            x_recipe, x_lookup = inst.x_recipe[u], inst.x_lookup[u]
            t_check, t_recipe = inst.t_check[u], inst.t_recipe[u]
            input_cost = self.input_cost[u]
            v = u + 1
            rest_after, others_after = self.rest[v], self.others_rest[v]
            size, others, others_main = self.common[v]
            others_main += others
            stream_works, stream_cum = self.stream_work[v]
            ratios = (self.weight_ratio[0][v], self.weight_ratio[1][v])
            base_streamed, surcharge = self.base_streamed[v], self.disk_surcharge[v]
            split_offload = gpu_main and surcharge < _INF
            kind_after = self.dominant[v]
            dom_size, dom_work, _, dom_streamed, dom_param = kind_after or (0, 0, (), (), 0)
            dom_count = self.dominant_count[v]
            future_params, future_block_work, future_work = self.future[v][2:]
            contexts: dict[tuple, tuple | None] = {}
            children: dict[tuple, list[tuple]] = {}
            for (used, cur, xs, ts), labels in layer.items():
                for (place, ex, price, kind, dsum, dmax), in_cost in zip(
                    self.options[u], (input_cost[o[1]] for o in self.options[u]), strict=True
                ):
                    if t_check >= 0 and ts[t_check] != place:
                        continue  # a tied group shares one placement
                    new_block = kind == _BLOCK and place != cur
                    if new_block:
                        if in_order:
                            if (place != main) if cur < 0 else (place < cur):
                                continue
                        elif used >> place & 1 or (pred[place] >= 0 and not used >> pred[place] & 1):
                            continue  # a GPU holds one block; twins open in index order
                    step = price + in_cost
                    for k, pair in x_lookup:
                        if xs[k] != ex:
                            step += inst.pair_cost(pair, xs[k], ex)
                    if step >= _INF:
                        continue
                    key = (
                        (0 if in_order else used | 1 << place) if new_block else used,
                        place if new_block else cur,
                        tuple(ex if j < 0 else xs[j] for j in x_recipe),
                        tuple(place if j < 0 else ts[j] for j in t_recipe),
                    )
                    bucket = children.get(key)
                    if bucket is None:
                        bucket = children[key] = []
                        contexts[key] = self._state_context(key, u)
                    context = contexts[key]
                    if context is None:
                        continue
                    structure, lag_base, room_free, rooms_free, main_closed, variant, need_after = context[:7]
                    open_other, lam_cur, cap_cur, dom_main, dom_cur, main_may_add, block_more = context[7:14]
                    fits_free = context[14]
                    after = cutoff - structure
                    on_main = kind != _BLOCK or place == main
                    for label in labels:
                        cost = label[0] + step
                        if cost >= after:
                            continue
                        ms, mx, cl, dl, bs, bm = label[1:7]
                        # -- memory: add the unit where it lives and runs; drop what overflows
                        if on_main:
                            if ms >= 0 and track_main:
                                ms += dsum
                                if dmax > mx:
                                    mx = dmax
                                if ms + mx > main_room:
                                    continue
                                if ms + main_may_add + (mx if mx > future_work else future_work) <= main_room:
                                    ms = mx = -1
                            if new_block:
                                bs = bm = 0
                            if kind == _OFFLOAD:
                                if place == cpu:
                                    if cl >= 0 and track_cpu:
                                        cl = (cl or cpu_over) + param[u]
                                        if cl > cpu_limit:
                                            continue
                                        if cl + future_params <= cpu_limit:
                                            cl = -1
                                elif dl >= 0 and track_disk:
                                    dl = (dl or disk_over) + param[u]
                                    if dl > disk_limit:
                                        continue
                                    if dl + future_params <= disk_limit:
                                        dl = -1
                        elif track[place]:
                            if new_block:
                                bs, bm = dsum, dmax
                            elif bs >= 0:
                                bs += dsum
                                if dmax > bm:
                                    bm = dmax
                            if bs >= 0:
                                if bs + bm + over[place] > limit[place]:
                                    continue
                                widest = bm if bm > future_block_work else future_block_work
                                if bs + block_more + widest <= 0:
                                    bs = bm = -1
                        elif new_block:
                            bs = bm = 0
                        # -- bounds on the rest: drop the label when one reaches the best map
                        room_main = cap_main - ms - mx
                        room_cur = cap_cur - bs - bm if open_other else 0
                        fill_cur = room_cur
                        if size:
                            whole = room_cur // size * size + others
                            if whole < room_cur:
                                fill_cur = whole
                        if main_closed or not size:
                            fill_main = room_main
                        else:
                            whole = room_main // size * size + others_main
                            fill_main = whole if whole < room_main else room_main
                        promise = cost + lag_base - lam_cur * fill_cur
                        if not main_closed:
                            promise -= lam_main * fill_main
                        if promise >= cutoff:
                            continue
                        if cost + structure > promise:
                            promise = cost + structure
                        if kind_after is not None:
                            rooms = list(rooms_free)
                            on_gpus = fits_free
                            if dom_cur < _INF:
                                room = cap_cur - bs - (bm if bm > dom_work else dom_work)
                                fits = (room // dom_size if dom_size else n) if room > 0 else 0
                                rooms.append((dom_cur, fits))
                                on_gpus += fits
                            if dom_main < _INF:
                                room = cap_main - ms - (mx if mx > dom_work else dom_work)
                                fits = (room // dom_size if dom_size else n) if room > 0 else 0
                                if on_gpus + fits < dom_count and dom_streamed:
                                    # some stream, so their weights pass through the main device
                                    streamed_work = dom_work + dom_param
                                    room = cap_main - ms - (mx if mx > streamed_work else streamed_work)
                                    fits = (room // dom_size if dom_size else n) if room > 0 else 0
                                rooms.append((dom_main, fits))
                            for where, dom_price in dom_streamed:
                                load = cl if where == cpu else dl
                                tracked = track_cpu if where == cpu else track_disk
                                if load < 0 or not dom_param or not tracked:
                                    rooms.append((dom_price, n))
                                else:
                                    room = limit[where] - (load or over[where])
                                    rooms.append((dom_price, max(0, room) // dom_param))
                            greedy = cost + others_after + self.greedy_dominant(v, rooms)
                            if greedy >= cutoff:
                                continue
                            if greedy > promise:
                                promise = greedy
                        excess = need_after - room_free - fill_cur
                        if not main_closed:
                            excess -= fill_main
                            if excess > 0:
                                # something streams: its weights pass through the main device
                                j = bisect.bisect_left(stream_cum, excess)
                                if j == len(stream_cum):
                                    continue
                                if stream_works[j] > mx:
                                    room_main -= stream_works[j] - (mx if mx > 0 else 0)
                                    if room_main < 0:
                                        continue
                                    excess = need_after - room_free - fill_cur
                                    excess -= (min(room_main, room_main // size * size + others_main)
                                               if size else room_main)  # fmt: skip
                        if excess > 0:
                            streaming = cost + rest_after + self.streaming_at_least(variant, v, excess)
                            if split_offload:
                                # the streamed weights fill the cpu, the rest is read from disk
                                weights = excess * ratios[variant] + base_streamed
                                cpu_room = cpu_limit - (cl or cpu_over) if track_cpu and cl >= 0 else _INF
                                if weights > cpu_room:
                                    disk_room = _INF
                                    if track_disk and dl >= 0:
                                        disk_room = disk_limit - (dl or disk_over)
                                    if weights - cpu_room > disk_room:
                                        continue
                                    streaming += (weights - cpu_room) * surcharge
                            if streaming >= cutoff:
                                continue
                            if streaming > promise:
                                promise = streaming
                        bucket.append((cost, ms, mx, cl, dl, bs, bm, label, place, promise))
            layer = {key: _pareto(bucket) for key, bucket in children.items() if bucket}
            if beam and sum(map(len, layer.values())) > beam:
                ranked = heapq.nsmallest(
                    beam, ((lab[9], k, lab) for k, labels in enumerate(layer.values()) for lab in labels)
                )
                keys = list(layer)
                layer = {}
                for _, k, label in ranked:
                    layer.setdefault(keys[k], []).append(label)
        best: tuple | None = None
        for (used, cur, _, _), labels in layer.items():
            if gpu_main and (cur < 0 if in_order else not used >> main & 1):
                continue  # the main device must hold a block
            for label in labels:
                if best is None or label[0] < best[0]:
                    best = label
        if best is None:
            return None
        placements = []
        node = best
        while node[7] is not None:
            placements.append(node[8])
            node = node[7]
        placements.reverse()
        return best[0], placements


def _shortest_paths(graph: list[list[list]], source: int | None) -> tuple[list[float], list[tuple[int, int]]]:
    """Bellman-Ford over arcs with room left; from every node at once when `source` is None."""
    size = len(graph)
    dist = [_INF] * size if source is not None else [0.0] * size
    if source is not None:
        dist[source] = 0.0
    back: list[tuple[int, int]] = [(-1, -1)] * size
    for _ in range(size):
        changed = False
        for a in range(size):
            if dist[a] == _INF:
                continue
            for k, (b, room, cost, _) in enumerate(graph[a]):
                if room > 0 and dist[a] + cost < dist[b] - 1e-18:
                    dist[b] = dist[a] + cost
                    back[b] = (a, k)
                    changed = True
        if not changed:
            break
    return dist, back


def _fillable(room: int, size: int, others: int) -> int:
    """Most bytes a device with `room` can hold of whole units of `size` plus `others` bytes."""
    return min(room, room // size * size + others) if size else room


def _pareto(labels: list[tuple]) -> list[tuple]:
    """The labels no other label dominates (no worse in latency and in every resource)."""
    labels.sort(key=lambda label: label[:7])
    kept: list[tuple] = []
    for label in labels:
        _, ms, mx, cl, dl, bs, bm = label[:7]
        for other in kept:
            if (other[1] <= ms and other[2] <= mx and other[3] <= cl and other[4] <= dl
                    and other[5] <= bs and other[6] <= bm):  # fmt: skip
                break
        else:
            kept.append(label)
    return kept


def solve(
    model: CostModel,
    *,
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    devices_in_order: bool = False,
) -> Solution | None:
    """The fastest map of the contiguous class (see the module docstring) that fits.

    Args:
        model: prices maps; its ``predict`` is the objective.
        pins: unit name -> placement (``"0"``, ``"cpu"``, ``"disk"``...) the map must use.
        exclude: devices no unit may be placed on (``"cpu"`` also rules out running on it).
        devices_in_order: GPUs follow the model in increasing index order (else any order).

    Returns:
        The optimal map with its prediction, or None when no map of the class fits.

    Raises:
        ValueError: a pin names an unknown unit or something that is not a device.

    Example:
        >>> solution = solve(model, pins={"lm_head": "1"}, exclude={"disk"})  # doctest: +SKIP
        >>> solution.device_map.to_hf(), solution.prediction.latency_s  # doctest: +SKIP
    """
    return _solve(model, pins, exclude, devices_in_order, prune=True)


def _solve(
    model: CostModel, pins: Mapping[str, str], exclude: Collection[str], devices_in_order: bool, prune: bool
) -> Solution | None:
    """`solve`; without `prune` the labels are cut by dominance alone (the bounds' yardstick)."""
    fixed, excluded = _check_arguments(model, pins, exclude)
    inst = _Instance(model, fixed, excluded, devices_in_order)
    if inst.allowed is None or inst.n == 0:
        return None
    problems = [_Problem(inst, main) for main in inst.mains()]
    problems.sort(key=lambda problem: problem.root_bound())
    best: tuple[float, list[int]] | None = None
    bound = _INF
    # narrow passes first, wider until one finds a map: a good map makes the exact pass prune hard
    for width in _BEAMS if prune else ():
        for problem in problems:
            found = problem.run(bound, beam=width)
            if found is not None and found[0] < bound:
                best, bound = found, found[0]
        if best is not None:
            break
    for problem in problems:
        found = problem.run(bound if prune else _INF)
        if found is not None and found[0] < bound:
            best, bound = found, found[0]
    if best is None:
        return None
    dmap = DeviceMap(tuple((name, inst.keys[place]) for name, place in zip(inst.names, best[1], strict=True)))
    return Solution(dmap, model.predict(dmap))
