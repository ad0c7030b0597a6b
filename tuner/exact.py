"""The exact optimum of the cost model: the fastest device map of the contiguous class that fits.

The class (DESIGN.md, "The exact optimum"). Units keep their execution order. Every GPU that a map
uses holds one contiguous block of the units that are not offloaded (GPUs may be skipped, and the
order of GPUs along the model is free unless ``devices_in_order``); any unit may instead be placed
on ``cpu`` or ``disk``, from where it streams its weights into the main device (the lowest GPU of
the map) on every call. Maps without any GPU (everything on ``cpu``/``disk``, executing on the
cpu) belong to the class too. Pins fix a unit's placement, excluded devices are never placed on
(an excluded ``cpu`` also rules out the maps that execute on the cpu), and the units of a tied
group share one placement.

The objective is `CostModel.predict` itself: minimise ``latency_s`` (prefill + new_tokens x
decode) subject to ``feasible``, with every term priced exactly as ``predict`` prices it:
compute on the execution device, weights streamed for offloaded units, a transfer for every edge
whose ends execute on different devices (long-range edges and the model inputs, which live on the
main device, included), and per device the sum of resident weights, offloaded buffers and KV cache
plus the *largest* working set, plus the runtime overhead, against the limit.

Method: label-setting dynamic programming over the units in execution order, the
resource-constrained shortest path technique of Desrochers & Soumis, "A generalized permanent
labelling algorithm for the shortest path problem with time windows", INFOR 26(3), 1988, combined
with the bitmask ("Held-Karp") DP over the set of used GPUs, which is what makes the free order of
GPUs exact (M. Held and R. M. Karp, "A dynamic programming approach to sequencing problems",
J. SIAM 10(1), 1962).

* One sub-problem per main device M (each GPU, and the cpu for maps without a GPU): M fixes where
  offloaded units execute and where the inputs live, so every edge cost is known locally.
* State after the first i units: the set S of GPUs used so far (bitmask), the GPU of the open
  block, the execution device of every unit whose edges reach past i (the previous unit, and e.g.
  ``rotary_emb`` or a T5 encoder's output that feed every later layer), and the placement of
  every tied group that is open at i. With ``devices_in_order`` S is not needed.
* Label of a state: (latency so far; main device: running sum and running max of working sets;
  cpu load; disk load; open block: running sum and running max). All resources only grow along a
  path, so a label that is no worse in latency and in every resource dominates: the Pareto set
  per state is exact. Devices whose limit exceeds everything the model could put there are not
  tracked (their resource stays 0).
* Exact reductions: GPUs that are interchangeable (same limit, overhead, unit timings, and a link
  table invariant under swapping them) are opened in index order only; a main device is skipped
  when an interchangeable lower GPU exists. A label whose latency plus an admissible bound on
  the rest (per unit, its cheapest placement) reaches the best complete map found so far (first
  by a narrow pass of the same DP, then by earlier main devices) is dropped (branch and bound).

Complexity: O(L x K x 2^K x K x P) states x labels for L units, K GPUs, P the number of distinct
execution-device tuples of open producers (1 to K^2 in real models), times the Pareto-set size.
Without cpu/disk pressure the Pareto set holds the O(L) start positions of the open block at
most; with it, the problem contains 0/1 knapsack (which units stream their weights), so it is
NP-hard and no polynomial exact method exists: the Pareto sets are pseudo-polynomial in the
number of distinct byte sums, which stays small when units repeat (identical decoder layers give
identical labels, which merge). Exact for up to 8 GPUs by design (2^K states); far faster with
interchangeable GPUs. Floating-point sums are taken in a different order than in ``predict``;
the returned map is priced by ``predict`` itself, optimal to within ~1e-12 relative.

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

from tuner.domain import INPUT
from tuner.domain import OFFLOAD
from tuner.domain import DeviceMap
from tuner.domain import Phase
from tuner.domain import Prediction

if TYPE_CHECKING:
    from tuner.costmodel import CostModel

__all__ = ["Solution", "solve", "brute_force"]

_INF = math.inf
#: Relative slack when pruning against the best map found: sums in a different order than
#: ``predict`` differ in the last bits, never by this much.
_PRUNE_RTOL = 1e-12
#: Labels kept per unit in the narrow first pass that finds a good upper bound.
_BEAM = 24


@dataclass(frozen=True)
class Solution:
    """The optimal map of the class and its price under ``CostModel.predict``."""

    device_map: DeviceMap
    prediction: Prediction

    @property
    def latency_s(self) -> float:
        return self.prediction.latency_s


def _rank(key: str) -> tuple[int, int]:
    """Order of accelerators for the main device: GPU indices first, then mps."""
    return (0, int(key)) if key.isdigit() else (1, 0)


def _check_arguments(
    model: CostModel, pins: Mapping[str, str], exclude: Collection[str]
) -> tuple[dict[str, str], frozenset[str]]:
    names = set(model.graph.unit_names)
    fixed = {}
    for unit, place in pins.items():
        if unit not in names:
            raise ValueError(f"pin names unknown unit {unit!r}")
        text = str(place).removeprefix("cuda:")
        if not (text.isdigit() or text in {"mps", "cpu", "disk"}):
            raise ValueError(f"unit {unit!r}: {place!r} is not a device (use 0, 1, ..., mps, cpu, disk)")
        fixed[unit] = text
    excluded = frozenset(str(device).removeprefix("cuda:") for device in exclude)
    return fixed, excluded


def _accelerators(model: CostModel, excluded: frozenset[str]) -> list[str]:
    """Devices a block may live on: profiled compute devices other than the cpu, by rank."""
    return sorted((d for d in model.compute_devices if d != "cpu" and d not in excluded), key=_rank)


def _offload_places(excluded: frozenset[str]) -> list[str]:
    return [place for place in OFFLOAD if place not in excluded]


def _tie_groups(model: CostModel) -> list[list[int]]:
    """Tied groups as sorted unit indices, overlapping groups merged."""
    index = {name: i for i, name in enumerate(model.graph.unit_names)}
    parent = list(range(len(index)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in model.graph.tied_groups:
        members = [index[name] for name in group]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(index)):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


# -- brute force ----------------------------------------------------------------------------


def _in_class(placements: tuple[str, ...], accelerators: set[str], in_order: bool) -> bool:
    """Each accelerator holds one run of the non-offloaded units (in rank order if asked)."""
    runs: list[str] = []
    for place in placements:
        if place in accelerators and (not runs or runs[-1] != place):
            runs.append(place)
    if len(set(runs)) != len(runs):
        return False
    return not in_order or runs == sorted(runs, key=_rank)


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
    """Plain per-unit arrays, combined over phases (prefill + new_tokens x decode)."""

    def __init__(self, model: CostModel, fixed: dict[str, str], excluded: frozenset[str], in_order: bool):
        self.model = model
        self.in_order = in_order
        self.names = model.graph.unit_names
        n = self.n = len(self.names)
        index = {name: i for i, name in enumerate(self.names)}
        self.weights = [(phase, 1.0 if phase is Phase.PREFILL else float(model.workload.new_tokens))
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
            pairs.setdefault((lo, hi), []).append((producer < consumer, edge.prefill_bytes, edge.decode_bytes))
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
        self.t_check: list[int] = []  # index into the previous tuple that u must match, or -1
        self.t_recipe: list[tuple[int, ...]] = []
        for i in range(n):
            prev_t = {g: k for k, g in enumerate(open_ties[i - 1])} if i else {}
            g = tie_of.get(i, -1)
            self.t_check.append(prev_t[g] if g in prev_t else -1)
            self.t_recipe.append(tuple(-1 if gg == g and gg not in prev_t else prev_t[gg] for gg in open_ties[i]))
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
                    total += w * calls * self.model.stream_seconds(u, self.keys[place], self.keys[main])
                except ValueError:
                    return _INF
        return total

    # -- symmetry ---------------------------------------------------------------------------

    def _interchangeable(self) -> list[int]:
        """Class representative of each accelerator: the lowest one it may be swapped with."""
        model = self.model
        devices = [d.key for d in model.hardware.devices]

        def link(s: str, d: str) -> tuple[float, float] | None:
            found = model.link(s, d)
            return None if found is None else (found.alpha_s, found.beta_bytes_per_s)

        def swappable(x: str, y: str) -> bool:
            if model.limit(x) != model.limit(y) or model.overhead(x) != model.overhead(y):
                return False
            for phase, _ in self.weights:
                if model.compute_seconds(x, phase) != model.compute_seconds(y, phase):
                    return False
            swap = {x: y, y: x}
            return all(
                link(swap.get(s, s), swap.get(d, d)) == link(s, d) for s in devices for d in devices if s != d
            )

        rep = list(range(len(self.acc)))
        for j, key in enumerate(self.acc):
            if j in self.pinned_gpus or not key.isdigit():
                continue
            for i in range(j):
                if rep[i] == i and i not in self.pinned_gpus and self.acc[i].isdigit() and swappable(self.acc[i], key):
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
    """The sub-problem with a fixed main device."""

    def __init__(self, inst: _Instance, main: int):
        self.inst = inst
        self.main = main
        model = inst.model
        n = inst.n
        gpu_main = main != inst.cpu
        gpus = list(range(main, len(inst.acc))) if gpu_main else []
        total_param = sum(inst.param)
        everything = sum(p + b + c for p, b, c in zip(inst.param, inst.buffer, inst.cache, strict=True))
        widest = max((w + p for w, p in zip(inst.work, inst.param, strict=True)), default=0)
        self.limit = {d: model.limit(inst.keys[d]) for d in range(len(inst.keys))}
        self.over = {d: model.overhead(inst.keys[d]) for d in range(len(inst.keys))}
        # a device whose limit holds everything the model could put there is not tracked
        self.track = {d: self.over[d] + everything + widest > self.limit[d] for d in gpus}
        self.track_main = self.over[main] + everything + widest > self.limit[main]
        self.track_cpu = gpu_main and self.over[inst.cpu] + total_param > self.limit[inst.cpu]
        self.track_disk = self.over[inst.disk] + total_param > self.limit[inst.disk]
        self.pred = inst.predecessors(main) if gpu_main else []
        # options per unit: (place, exec, unit cost, kind, sum delta, max delta)
        self.options: list[list[tuple[int, int, float, int, int, int]]] = []
        self.input_cost: list[dict[int, float]] = []
        for u in range(n):
            resident = inst.param[u] + inst.buffer[u] + inst.cache[u]
            streamed = inst.buffer[u] + inst.cache[u]
            opts = []
            for place in sorted(inst.allowed[u]) if inst.allowed is not None else []:
                if place < len(inst.acc):
                    if place not in gpus:
                        continue
                    opts.append((place, place, inst.compute[place][u], _BLOCK, resident, inst.work[u]))
                elif not gpu_main and place == inst.cpu:
                    opts.append((place, main, inst.compute[main][u], _RESIDENT, resident, inst.work[u]))
                else:
                    cost = inst.compute[main][u] + inst.stream(u, place, main)
                    opts.append((place, main, cost, _OFFLOAD, streamed, inst.work[u] + inst.param[u]))
            opts = [o for o in opts if o[2] < _INF]
            self.options.append(opts)
            execs = {o[1] for o in opts}
            self.input_cost.append(
                {e: sum(inst.transfer(main, e, nbytes) for nbytes in inst.inputs[u]) for e in execs}
            )
        # admissible bounds on the rest (edges between units taken as free):
        # each unit at its cheapest placement ...
        self.rest = [0.0] * (n + 1)
        for u in range(n - 1, -1, -1):
            cheapest = min((o[2] + self.input_cost[u][o[1]] for o in self.options[u]), default=_INF)
            self.rest[u] = self.rest[u + 1] + cheapest
        # ... each unit on a GPU still open to it, paying edges from producers already placed ...
        self._structure_tables()
        # ... the most common kind of unit (a decoder layer) placed greedily on the cheapest
        # devices with room for whole units, every other unit at its cheapest placement ...
        self._dominant_tables()
        # ... the room left on the GPUs, all pooled: what does not fit must stream, cheapest
        # first (a fractional knapsack, exact for the pooled relaxation) ...
        self.gpus = gpus
        self.cap = {d: max(0, self.limit[d] - self.over[d]) for d in (gpus or [main])}
        self._pooled_bound_tables()
        # ... and the Lagrangian relaxation of the devices' capacities: for any prices lam >= 0,
        # sum_u min_o (cost_o + lam[dev_o] bytes_o) - sum_d lam[d] room_d is a lower bound
        self.lam = self._prices()
        lam = self.lam
        # (variant 1: the main device's block is closed, so only streamed units run there)
        self.lagrange = ([0.0] * (n + 1), [0.0] * (n + 1))
        for variant in (0, 1):
            table = self.lagrange[variant]
            for u in range(n - 1, -1, -1):
                # (with the block closed, the main device's room is priced at 0: it only takes
                # the buffers and cache of streamed units, which is all the bound can use)
                cheapest = min(
                    (o[2] + self.input_cost[u][o[1]] + (0.0 if variant and o[1] == main else lam[o[1]]) * o[4]
                     for o in self.options[u] if not (variant and o[3] == _BLOCK and o[0] == main)),
                    default=_INF,
                )  # fmt: skip
                table[u] = table[u + 1] + cheapest

    def _dominant_tables(self) -> None:
        inst = self.inst
        n = inst.n
        signature: list[tuple] = []
        for u in range(n):
            on_device: dict[int, float] = {}
            streamed: dict[int, float] = {}
            for place, ex, cost, kind, _, _ in self.options[u]:
                cost += self.input_cost[u][ex]
                if kind == _OFFLOAD:
                    streamed[place] = min(streamed.get(place, _INF), cost)
                else:
                    on_device[ex] = min(on_device.get(ex, _INF), cost)
            size = inst.param[u] + inst.buffer[u] + inst.cache[u]
            signature.append(
                (size, inst.work[u], tuple(sorted(on_device.items())), tuple(sorted(streamed.items())), inst.param[u])
            )
        # per suffix: the kind with most units, how many, and the cheapest price of the others
        self.dominant: list[tuple | None] = [None] * (n + 1)
        self.dominant_count = [0] * (n + 1)
        self.others_rest = [0.0] * (n + 1)
        counts: dict[tuple, int] = {}
        for u in range(n - 1, -1, -1):
            counts[signature[u]] = counts.get(signature[u], 0) + 1
            kind = max(counts, key=counts.__getitem__)
            cheapest = min((c for _, c in kind[2] + kind[3]), default=_INF)
            self.dominant[u] = kind
            self.dominant_count[u] = counts[kind]
            self.others_rest[u] = self.rest[u] - counts[kind] * cheapest if self.rest[u] < _INF else _INF

    def greedy_dominant(self, u: int, rooms: list[tuple[float, int]]) -> float:
        """Least price of placing the dominant units of u.. where `rooms` says, per device or
        offload place, the price of one unit there and how many fit (cheapest first, whole
        units); inf when they cannot all fit."""
        left = self.dominant_count[u]
        total = 0.0
        for price, fits in sorted(rooms):
            take = fits if fits < left else left
            total += take * price
            left -= take
            if not left:
                return total
        return _INF

    def _structure_tables(self) -> None:
        inst = self.inst
        n = inst.n
        self.on_gpu: list[dict[int, float]] = []  # unit -> GPU -> cheapest price of a block there
        self.anywhere: list[float] = []  # unit -> cheapest price executing on the main device
        for u in range(n):
            on_gpu: dict[int, float] = {}
            anywhere = _INF
            for place, ex, cost, kind, _, _ in self.options[u]:
                cost += self.input_cost[u][ex]
                if kind == _BLOCK:
                    on_gpu[place] = min(on_gpu.get(place, _INF), cost)
                else:
                    anywhere = min(anywhere, cost)
            self.on_gpu.append(on_gpu)
            self.anywhere.append(anywhere)
        # producers whose edges skip units (rotary_emb, an encoder's output): their device is
        # known to a state long before their consumers are placed
        self.long_range = {lo for lo, hi in inst.pair_edges if hi >= lo + 2}
        self.feeds: list[list[tuple[int, tuple[int, int]]]] = [[] for _ in range(n)]
        for lo, hi in inst.pair_edges:
            if lo in self.long_range:
                self.feeds[hi].append((lo, (lo, hi)))
        ids: dict[tuple, int] = {}
        self.signature = [
            ids.setdefault(
                (tuple(sorted(self.on_gpu[u].items())), self.anywhere[u],
                 tuple((lo, tuple(inst.pair_edges[pair])) for lo, pair in sorted(self.feeds[u]))),
                len(ids),
            )
            for u in range(n)
        ]  # fmt: skip
        self.all_gpus = sum(1 << g for g in gpus) if (gpus := [g for g in range(len(inst.acc)) if g >= self.main]) else 0
        if self.main == inst.cpu:
            self.all_gpus = 0
        self._suffix: dict[tuple, list[float]] = {}
        self._unit_bound: dict[tuple, float] = {}

    def structure_bound(self, v: int, avail: int, known: tuple[tuple[int, int], ...]) -> float:
        """Least price of units v.. when blocks may only open on the GPUs of `avail` and the
        long-range producers of `known` sit where it says (edges among later units free)."""
        ctx = (avail, known)
        table = self._suffix.get(ctx)
        if table is None:
            table = self._suffix[ctx] = [_INF] * self.inst.n + [0.0]
        if table[v] < _INF or v == self.inst.n:
            return table[v]
        where = dict(known)
        u = v
        while u + 1 < self.inst.n and table[u + 1] == _INF:
            u += 1
        for w in range(u, v - 1, -1):
            memo_key = (self.signature[w], ctx)
            price = self._unit_bound.get(memo_key)
            if price is None:
                feeds = [(where[lo], pair) for lo, pair in self.feeds[w] if lo in where]
                price = self.anywhere[w]
                if price < _INF:
                    for e, pair in feeds:
                        price += self.inst.pair_cost(pair, e, self.main)
                for g, cost in self.on_gpu[w].items():
                    if avail >> g & 1 and cost < price:
                        for e, pair in feeds:
                            cost += self.inst.pair_cost(pair, e, g)
                        if cost < price:
                            price = cost
                self._unit_bound[memo_key] = price
            table[w] = table[w + 1] + price
        return table[v]

    def _pooled_bound_tables(self) -> None:
        """Per suffix of units: what they need on the GPUs at their cheapest placement, and the
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
                resident = [o[2] + self.input_cost[u][o[1]] for o in self.options[u] if o[3] != _OFFLOAD]
                streamed = [o[2] + self.input_cost[u][o[1]] for o in self.options[u] if o[3] == _OFFLOAD]
                bytes_on = inst.param[u] + inst.buffer[u] + inst.cache[u]
                bytes_off = 0 if variant else inst.buffer[u] + inst.cache[u]
                if resident and (not streamed or min(resident) <= min(streamed)):
                    need[u] = need[u + 1] + bytes_on
                    if streamed and bytes_on > bytes_off:
                        extra = min(streamed) - min(resident)
                        entry = by_ratio.setdefault(extra / (bytes_on - bytes_off), [0, 0.0])
                        entry[0] += bytes_on - bytes_off
                        entry[1] += extra
                else:
                    need[u] = need[u + 1] + bytes_off
                cum_bytes, cum_cost, ratios = [], [], []
                total_bytes, total_cost = 0, 0.0
                for ratio in sorted(by_ratio):
                    total_bytes += by_ratio[ratio][0]
                    total_cost += by_ratio[ratio][1]
                    cum_bytes.append(total_bytes)
                    cum_cost.append(total_cost)
                    ratios.append(ratio)
                saving[u] = (cum_bytes, cum_cost, ratios)
        # what streamed units put on the cpu and the disk: per suffix, the fewest weight bytes
        # per byte saved on the GPUs, the weights that stream at their cheapest placement, and
        # the least extra price per byte of reading from disk instead of the cpu
        self.weight_ratio = ([1.0] * (n + 1), [1.0] * (n + 1))
        self.base_streamed = [0] * (n + 1)
        self.disk_surcharge = [_INF] * (n + 1)
        for u in range(n - 1, -1, -1):
            streamed = {o[0]: o[2] + self.input_cost[u][o[1]] for o in self.options[u] if o[3] == _OFFLOAD}
            resident = [o[2] + self.input_cost[u][o[1]] for o in self.options[u] if o[3] != _OFFLOAD]
            param, size = inst.param[u], inst.param[u] + inst.buffer[u] + inst.cache[u]
            ratio0, ratio1 = self.weight_ratio[0][u + 1], self.weight_ratio[1][u + 1]
            if streamed and param:
                ratio1 = min(ratio1, param / size)
            self.weight_ratio[0][u], self.weight_ratio[1][u] = ratio0, ratio1
            base_streamed = 0
            if streamed and (not resident or min(streamed.values()) < min(resident)):
                base_streamed = param if inst.cpu in streamed and streamed[inst.cpu] <= min(streamed.values()) else 0
            self.base_streamed[u] = self.base_streamed[u + 1] + base_streamed
            surcharge = self.disk_surcharge[u + 1]
            if param and inst.cpu in streamed and inst.disk in streamed:
                surcharge = min(surcharge, (streamed[inst.disk] - streamed[inst.cpu]) / param)
            self.disk_surcharge[u] = surcharge
        # the GPU bytes a suffix can really fill: a device's load is some units of the most
        # common size plus at most everything else, so room beyond k whole units plus the rest
        # is wasted; each used device also holds a working set
        sizes = [p + b + c for p, b, c in zip(inst.param, inst.buffer, inst.cache, strict=True)]
        self.common = [(0, 0, 0)] * (n + 1)  # (size, bytes of other units, streamed bytes of these)
        self.least_work = [0] * (n + 1)
        by_size: dict[int, list[int]] = {}
        for u in range(n - 1, -1, -1):
            entry = by_size.setdefault(sizes[u], [0, 0])
            entry[0] += sizes[u]
            entry[1] += inst.buffer[u] + inst.cache[u]
            size = max(by_size, key=lambda k: by_size[k][0])
            self.common[u] = (size, sum(v[0] for v in by_size.values()) - by_size[size][0], by_size[size][1])
            self.least_work[u] = min(inst.work[u], self.least_work[u + 1]) if u < n - 1 else inst.work[u]
        # streaming `excess` bytes needs units whose weights pass through the main device's
        # working set: by working set, ascending, with the bytes streaming them saves
        self.stream_work: list[tuple[list[int], list[int]]] = [([], [])] * (n + 1)
        for u in range(n - 1, -1, -1):
            rows = sorted(
                (inst.work[v] + inst.param[v], inst.param[v])
                for v in range(u, n)
                if inst.param[v] and any(o[3] == _OFFLOAD for o in self.options[v])
            )
            works, cum = [], []
            total = 0
            for work, param in rows:
                total += param
                if works and works[-1] == work:
                    cum[-1] = total
                else:
                    works.append(work)
                    cum.append(total)
            self.stream_work[u] = (works, cum)
        # what the rest could add at most, to tell when a device can no longer overflow
        self.future = [(0, 0, 0, 0, 0)] * (n + 1)  # (sizes, streamed sizes, params, max work, max streamed work)
        for u in range(n - 1, -1, -1):
            a, b, c, d, e = self.future[u + 1]
            self.future[u] = (a + sizes[u], b + inst.buffer[u] + inst.cache[u], c + inst.param[u],
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

    def _prices(self) -> dict[int, float]:
        """Capacity prices (seconds per byte) that make the Lagrangian bound tight at the root.

        They are the optimal duals of the transportation LP that sends every unit's bytes to a
        GPU of limited room or, at its offload price, to an unlimited sink (offloading's small
        charge on the main device relaxed away), solved by successive shortest paths (Ahuja,
        Magnanti and Orlin, "Network Flows", 1993, ch. 9). Any prices are valid; these are good.
        """
        cap = self.cap
        lam = dict.fromkeys(cap, 0.0)
        types: dict[tuple, int] = {}
        for u, opts in enumerate(self.options):
            row = tuple((o[1], o[3] == _OFFLOAD, o[4], o[2] + self.input_cost[u][o[1]]) for o in opts)
            types[row] = types.get(row, 0) + 1
        # nodes: 0 source, 1 sink, 2 offload, then devices, then unit types
        devices = list(cap)
        node_of = {d: 3 + k for k, d in enumerate(devices)}
        graph: list[list[list]] = [[] for _ in range(3 + len(devices))]  # arc: [to, cap, cost, rev]

        def arc(a: int, b: int, capacity: float, cost: float) -> None:
            graph[a].append([b, capacity, cost, len(graph[b])])
            graph[b].append([a, 0, -cost, len(graph[a]) - 1])

        supply = 0
        for row, count in types.items():
            size = max((w for _, off, w, _ in row if not off), default=0)
            if size <= 0:
                continue
            node = len(graph)
            graph.append([])
            arc(0, node, count * size, 0.0)
            supply += count * size
            for ex, off, _, c in row:
                arc(node, 2 if off else node_of[ex], _INF, c / size)
        arc(2, 1, _INF, 0.0)
        for d in devices:
            arc(node_of[d], 1, cap[d], 0.0)
        sent = 0
        while sent < supply:
            dist, back = self._shortest(graph, 0)
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
        # a feasible potential of the optimal residual graph gives the duals
        potential, _ = self._shortest(graph, None)
        for d in devices:
            lam[d] = max(0.0, potential[1] - potential[node_of[d]])
        return lam

    @staticmethod
    def _shortest(graph: list[list[list]], source: int | None) -> tuple[list[float], list[tuple[int, int]]]:
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

    def run(self, bound: float, beam: int = 0) -> tuple[float, list[int]] | None:
        """Best complete map of this sub-problem cheaper than `bound`, as (latency, placements)."""
        inst = self.inst
        n = inst.n
        main = self.main
        gpu_main = main != inst.cpu
        in_order = inst.in_order
        limit, over, track, pred = self.limit, self.over, self.track, self.pred
        track_main, track_cpu, track_disk = self.track_main, self.track_cpu, self.track_disk
        main_room = limit[main] - over[main]
        cpu_limit, cpu_over = limit[inst.cpu], over[inst.cpu]
        disk_limit, disk_over = limit[inst.disk], over[inst.disk]
        cpu_place, disk_place = inst.cpu, inst.disk
        rest, lagrange, lam, cap = self.rest, self.lagrange, self.lam, self.cap
        cap_main, lam_main = cap[main], lam[main]
        cutoff = bound * (1 - _PRUNE_RTOL) if bound < _INF else _INF
        if max(rest[0], lagrange[0][0] - sum(lam[d] * cap[d] for d in cap)) >= cutoff:
            return None
        dominant, others_rest, greedy_dominant = self.dominant, self.others_rest, self.greedy_dominant
        offload_limit = {cpu_place: cpu_limit - cpu_over if track_cpu else -1,
                         disk_place: disk_limit - disk_over if track_disk else -1}  # fmt: skip
        if n and dominant[0] is not None:
            size0, work0, prices0, streamed0, param0 = dominant[0]
            rooms0 = [(c, max(0, cap[d] - work0) // size0 if size0 else n) for d, c in prices0 if d in cap]
            for place, c in streamed0:
                room = offload_limit[place]
                rooms0.append((c, n if room < 0 or not param0 else max(0, room) // param0))
            if others_rest[0] + greedy_dominant(0, rooms0) >= cutoff:
                return None
        need, streaming_at_least = self.need, self.streaming_at_least
        all_gpus = self.all_gpus
        unused_memo: dict[tuple[int, int, int], tuple[float, int, list]] = {}

        def unused(used: int, cur: int, u: int) -> tuple[float, int, list]:
            """Over the GPUs that may still open a block for units u..: sum of lam x room, and
            the bytes they can really fill."""
            found = unused_memo.get((used, cur, u))
            if found is None:
                if in_order:
                    free = [g for g in self.gpus if g != main and g > cur]
                else:
                    free = [g for g in self.gpus if g != main and g != cur and not used >> g & 1]
                size, others, _ = self.common[u]
                least = self.least_work[u]
                fills = [_fillable(max(0, cap[g] - least), size, others) for g in free]
                kind = dominant[u]
                rooms: list[tuple[float, int]] = []
                if kind is not None:
                    prices = dict(kind[2])
                    for g in free:
                        if g in prices:
                            rooms.append((prices[g], max(0, cap[g] - kind[1]) // kind[0] if kind[0] else n))
                found = unused_memo[(used, cur, u)] = (
                    sum(lam[g] * fill for g, fill in zip(free, fills, strict=True)), sum(fills), rooms
                )
            return found
        # label: (cost, main sum, main max, cpu load, disk load, block sum, block max, parent, place)
        layer: dict[tuple, list[tuple]] = {(0, -1, (), ()): [(0.0, 0, 0, 0, 0, 0, 0, None, -1, 0.0)]}
        for u in range(n):
            options = self.options[u]
            x_recipe, x_lookup = inst.x_recipe[u], inst.x_lookup[u]
            t_check, t_recipe = inst.t_check[u], inst.t_recipe[u]
            input_cost = self.input_cost[u]
            rest_after = rest[u + 1]
            lagrange_after = (lagrange[0][u + 1], lagrange[1][u + 1])
            size, others, others_main = self.common[u + 1]
            others_main += others
            stream_works, stream_cum = self.stream_work[u + 1]
            kind_after = dominant[u + 1]
            weight_ratio = (self.weight_ratio[0][u + 1], self.weight_ratio[1][u + 1])
            base_streamed = self.base_streamed[u + 1]
            surcharge = self.disk_surcharge[u + 1]
            split_offload = gpu_main and surcharge < _INF
            if kind_after is not None:
                dom_size, dom_work, dom_list, dom_streamed, dom_param = kind_after
                dom_prices = dict(dom_list)
            others_after = others_rest[u + 1]
            future_sizes, future_streamed, future_params, future_block_work, future_work = self.future[u + 1]
            open_after = inst.open_after[u]
            long_range = [k for k, j in enumerate(open_after) if j in self.long_range]
            structure_after: dict[tuple, float] = {}
            children: dict[tuple, list[tuple]] = {}
            for (used, cur, xs, ts), labels in layer.items():
                for place, ex, unit_cost, kind, dsum, dmax in options:
                    if t_check >= 0 and ts[t_check] != place:
                        continue
                    new_block = False
                    if kind == _BLOCK and place != cur:
                        if in_order:
                            if (place != main) if cur < 0 else (place < cur):
                                continue
                        else:
                            if used >> place & 1:
                                continue
                            p = pred[place]
                            if p >= 0 and not used >> p & 1:
                                continue
                        new_block = True
                    step = unit_cost + input_cost[ex]
                    for k, pair in x_lookup:
                        lo_exec = xs[k]
                        if lo_exec != ex:
                            step += inst.pair_cost(pair, lo_exec, ex)
                    if step >= _INF:
                        continue
                    if new_block:
                        key = (0 if in_order else used | 1 << place, place,
                               tuple(ex if j < 0 else xs[j] for j in x_recipe),
                               tuple(place if j < 0 else ts[j] for j in t_recipe))  # fmt: skip
                    else:
                        key = (used, cur, tuple(ex if j < 0 else xs[j] for j in x_recipe),
                               tuple(place if j < 0 else ts[j] for j in t_recipe))  # fmt: skip
                    bucket = children.get(key)
                    if bucket is None:
                        bucket = children[key] = []
                        if in_order:
                            avail = all_gpus if key[1] < 0 else all_gpus & ~((1 << key[1]) - 1)
                        else:
                            avail = all_gpus & ~key[0] | (1 << key[1] if key[1] >= 0 else 0)
                        known = tuple((open_after[k], key[2][k]) for k in long_range)
                        structure_after[key] = self.structure_bound(u + 1, avail, known)
                    key_bound = structure_after[key]
                    key_after = cutoff - key_bound
                    on_main = kind != _BLOCK or place == main
                    # the bounds, less the parts that depend on the label
                    lam_free, room_free, rooms_free = unused(key[0], key[1], u + 1)
                    open_other = key[1] >= 0 and key[1] != main
                    lam_cur = lam[key[1]] if open_other else 0.0
                    cap_cur = cap[key[1]] if open_other else 0
                    if not gpu_main or not open_other:
                        main_closed = False
                    else:
                        main_closed = key[1] >= 0 if in_order else bool(key[0] >> main & 1)
                    variant = 1 if main_closed else 0
                    lag_base = lagrange_after[variant] - lam_free
                    if kind_after is not None:
                        dom_main = dom_prices.get(main, _INF) if not main_closed else _INF
                        dom_cur = dom_prices.get(key[1], _INF) if open_other else _INF
                    need_after = need[variant][u + 1]
                    main_may_add = future_streamed if main_closed else future_sizes
                    block_more = future_sizes + over[key[1]] - limit[key[1]] if open_other else 0
                    for label in labels:
                        cost = label[0] + step
                        if cost >= key_after:
                            continue
                        ms, mx, cl, dl, bs, bm = label[1:7]
                        if on_main:
                            if ms >= 0 and track_main:
                                ms += dsum
                                if dmax > mx:
                                    mx = dmax
                                if ms + mx > main_room:
                                    continue
                                if ms + main_may_add + (mx if mx > future_work else future_work) <= main_room:
                                    ms = mx = -1  # no placement of the rest can overflow it
                            if new_block:
                                bs = bm = 0
                            if kind == _OFFLOAD:
                                if place == cpu_place:
                                    if cl >= 0 and track_cpu:
                                        cl = (cl or cpu_over) + inst.param[u]
                                        if cl > cpu_limit:
                                            continue
                                        if cl + future_params <= cpu_limit:
                                            cl = -1
                                elif dl >= 0 and track_disk:
                                    dl = (dl or disk_over) + inst.param[u]
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
                                if bs + block_more + (bm if bm > future_block_work else future_block_work) <= 0:
                                    bs = bm = -1
                        elif new_block:
                            bs = bm = 0
                        # room that whole units can fill on the main device and the open block
                        room_main, room_cur = cap_main - ms - mx, cap_cur - bs - bm if open_other else 0
                        fill_cur = min(room_cur, room_cur // size * size + others) if size else room_cur
                        if main_closed or not size:
                            fill_main = room_main
                        else:
                            fill_main = min(room_main, room_main // size * size + others_main)
                        promise = cost + lag_base - lam_cur * fill_cur
                        if not main_closed:
                            promise -= lam_main * fill_main
                        if promise >= cutoff:
                            continue
                        if key_bound + cost > promise:
                            promise = cost + key_bound
                        if kind_after is not None:
                            rooms = list(rooms_free)
                            if dom_main < _INF:
                                room = cap_main - ms - (mx if mx > dom_work else dom_work)
                                rooms.append((dom_main, room // dom_size if dom_size and room > 0 else n * (room > 0)))
                            if dom_cur < _INF:
                                room = cap_cur - bs - (bm if bm > dom_work else dom_work)
                                rooms.append((dom_cur, room // dom_size if dom_size and room > 0 else n * (room > 0)))
                            for where, price in dom_streamed:
                                load = cl if where == cpu_place else dl
                                if load < 0 or not dom_param or not (track_cpu if where == cpu_place else track_disk):
                                    rooms.append((price, n))
                                else:
                                    room = (cpu_limit if where == cpu_place else disk_limit) - (
                                        load or (cpu_over if where == cpu_place else disk_over))
                                    rooms.append((price, max(0, room) // dom_param))
                            greedy = cost + others_after + greedy_dominant(u + 1, rooms)
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
                            streaming = cost + rest_after + streaming_at_least(variant, u + 1, excess)
                            if split_offload:
                                # the weights streamed need room on the cpu, then on the disk
                                weights = excess * weight_ratio[variant] + base_streamed
                                cpu_room = cpu_limit - (cl or cpu_over) if track_cpu and cl >= 0 else _INF
                                if weights > cpu_room:
                                    disk_room = disk_limit - (dl or disk_over) if track_disk and dl >= 0 else _INF
                                    if weights - cpu_room > disk_room:
                                        continue
                                    streaming += (weights - cpu_room) * surcharge
                            if streaming >= cutoff:
                                continue
                            if streaming > promise:
                                promise = streaming
                        bucket.append((cost, ms, mx, cl, dl, bs, bm, label, place, promise))
            layer = {}
            for key, bucket in children.items():
                if bucket:
                    layer[key] = _pareto(bucket)
            if beam and sum(map(len, layer.values())) > beam:
                # the narrow pass keeps the most promising labels only
                ranked = heapq.nsmallest(beam, ((label[9], k, label) for k, labels in enumerate(layer.values())
                                                for label in labels))  # fmt: skip
                keys = list(layer)
                layer = {}
                for _, k, label in ranked:
                    layer.setdefault(keys[k], []).append(label)
        best: tuple | None = None
        for (used, cur, _, _), labels in layer.items():
            if gpu_main and (cur < 0 if in_order else not used >> main & 1):
                continue
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
        exclude: devices no unit may be placed on.
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
    problems.sort(key=lambda problem: problem.rest[0])
    best: tuple[float, list[int]] | None = None
    bound = _INF
    # a narrow pass first: a good complete map makes the exact pass prune hard
    for problem in problems if prune else ():
        found = problem.run(bound, beam=_BEAM)
        if found is not None and found[0] < bound:
            best, bound = found, found[0]
    for problem in problems:
        found = problem.run(bound if prune else _INF)
        if found is not None and found[0] < bound:
            best, bound = found, found[0]
    if best is None:
        return None
    dmap = DeviceMap(tuple((name, inst.keys[place]) for name, place in zip(inst.names, best[1], strict=True)))
    return Solution(dmap, model.predict(dmap))
