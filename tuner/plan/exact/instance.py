"""The exact solver's problem instance: the cost model flattened into plain per-unit arrays.

`_Instance` holds what every sub-problem shares: devices as indices (the accelerators by rank,
then ``cpu`` and ``disk``), the placements pins and exclusions leave each unit, per-unit bytes and
compute seconds combined over phases (prefill + decode steps x decode), transfer and streaming
prices, how the tuples of open producers and open tied groups evolve along the units, and the
exact symmetry reduction: GPUs that are interchangeable (same limit, overhead and unit timings,
link table unchanged by swapping them) open in index order only, and a main device is tried
only when no lower twin exists.

`_Problem` is the sub-problem of one main device M (each GPU, and the cpu for maps without one):
M fixes where offloaded units run and where the inputs live, so every edge is priced when its
consumer is. It lists the options of each unit and the limits of each device.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Mapping
from math import inf
from typing import TYPE_CHECKING
from typing import NamedTuple

from tuner.core.devices import OFFLOAD
from tuner.core.devices import device_order
from tuner.core.devices import is_gpu
from tuner.core.devices import to_key
from tuner.core.domain import INPUT
from tuner.core.domain import Phase

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

#: Kinds of option: open or extend a block on a GPU, stream from cpu/disk into the main device,
#: or sit on the cpu when the cpu is the main device. Plain ints: compared in the hot loop.
_BLOCK, _OFFLOAD, _RESIDENT = 0, 1, 2


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


class _PairEdge(NamedTuple):
    """An edge between two units, seen from the pair (lower index, higher index) it joins."""

    forward: bool  # from the lower unit to the higher one
    prefill_bytes: int
    decode_bytes: int


class _Instance:
    """Plain per-unit arrays, combined over phases (prefill + decode steps x decode)."""

    def __init__(
        self,
        model: CostModel,
        fixed: dict[str, str],
        excluded: frozenset[str],
        in_order: bool,
        *,
        cpu_decode_path: bool = False,
    ):
        """`cpu_decode_path`: the maps that run on the cpu with the model's device unit there,
        whose experts decode on the cpu's own path with smaller working sets
        (`CostModel.working_set_bytes_decoding_on_cpu`); the other maps count the larger ones
        whatever the map, which is exact for them."""
        self.model = model
        self.cpu_decode_path = cpu_decode_path
        self.in_order = in_order
        self.names = model.graph.unit_names
        n = self.n = len(self.names)
        index = {name: i for i, name in enumerate(self.names)}
        self.weights = [(phase, 1.0 if phase is Phase.PREFILL else float(model.workload.decode_steps))
                        for phase in model.phases]  # fmt: skip
        if model.calibration is not None:  # a calibrated phase weighs its factor more (or less)
            factors = {Phase.PREFILL: model.calibration.prefill, Phase.DECODE: model.calibration.decode}
            self.weights = [(phase, weight * factors[phase]) for phase, weight in self.weights]
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
        self.pinned_gpus = {self.keys.index(fixed[nm]) for nm in fixed if fixed[nm] in self.acc}
        units = model.graph.units
        self.param = [u.param_bytes for u in units]
        self.buffer = [u.buffer_bytes for u in units]
        self.cache = list(model.cache_bytes)
        on_cpu_path = model.working_set_bytes_decoding_on_cpu if cpu_decode_path else None
        self.work = list(model.working_set_bytes if on_cpu_path is None else on_cpu_path)
        decoding_on_cpu = on_cpu_path is not None
        # a streamed unit's working set, its weights included, by where they stream from
        self.streamed_work = {
            place: list(model.streamed_working_set_bytes(key, decoding_on_cpu=decoding_on_cpu))
            for place, key in ((self.cpu, "cpu"), (self.disk, "disk"))
        }
        # the most any unit holds at once, wherever it is
        self.widest = max((max(row, default=0) for row in self.streamed_work.values()), default=0)
        self.calls = {phase: model.calls(phase) for phase, _ in self.weights}
        compute_keys = [*self.acc, "cpu"] if self.cpu_main else list(self.acc)
        self.compute: dict[int, list[float]] = {}
        for key in compute_keys:
            rows = [(w, model.compute_seconds(key, phase)) for phase, w in self.weights]
            self.compute[self.keys.index(key)] = [sum(w * row[u] for w, row in rows) for u in range(n)]
        # edges, grouped by the unordered pair of units they join
        pairs: dict[tuple[int, int], list[_PairEdge]] = {}
        self.inputs: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (prefill, decode) bytes
        for edge in model.graph.edges:
            consumer = index[edge.consumer]
            if edge.producer == INPUT:
                self.inputs[consumer].append((edge.prefill_bytes, edge.decode_bytes))
                continue
            producer = index[edge.producer]
            if producer == consumer:
                continue
            lo, hi = min(producer, consumer), max(producer, consumer)
            pair_edge = _PairEdge(producer < consumer, edge.prefill_bytes, edge.decode_bytes)
            pairs.setdefault((lo, hi), []).append(pair_edge)
        self.pair_edges = pairs
        last = [-1] * n
        before: list[list[int]] = [[] for _ in range(n)]
        for lo, hi in sorted(pairs):
            last[lo] = max(last[lo], hi)
            before[hi].append(lo)
        # units whose edges reach past position i, and how the tuple of their devices evolves:
        # entry k of the tuple after i is entry x_recipe[i][k] of the one before (-1: unit i's);
        # x_lookup[i] pairs each earlier neighbour's entry before i with the pair of units
        self.open_after = [[j for j in range(i + 1) if last[j] > i] for i in range(n)]
        self.x_recipe: list[tuple[int, ...]] = []
        self.x_lookup: list[list[tuple[int, tuple[int, int]]]] = []
        for i in range(n):
            prev = {j: k for k, j in enumerate(self.open_after[i - 1])} if i else {}
            self.x_recipe.append(tuple(-1 if j == i else prev[j] for j in self.open_after[i]))
            self.x_lookup.append([(prev[j], (j, i)) for j in before[i]])
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
        self._edge_memo: dict[tuple[int, int, int, int], float] = {}
        self._classes = self._interchangeable()

    # -- prices ---------------------------------------------------------------------------

    def transfer(self, src: int, dst: int, nbytes: tuple[int, int]) -> float:
        """Seconds to move (prefill, decode) bytes from `src` to `dst`, over all phases."""
        if src == dst:
            return 0.0
        total = 0.0
        for k, (_, w) in enumerate(self.weights):
            if w:
                try:
                    total += w * self.model.transfer_seconds(self.keys[src], self.keys[dst], nbytes[k])
                except ValueError:
                    return inf
        return total

    def pair_cost(self, pair: tuple[int, int], e_lo: int, e_hi: int) -> float:
        """Seconds of the edges between the units of `pair` when they run on `e_lo` and `e_hi`."""
        memo_key = (pair[0], pair[1], e_lo, e_hi)
        cost = self._edge_memo.get(memo_key)
        if cost is None:
            cost = 0.0
            if e_lo != e_hi:
                for forward, prefill_bytes, decode_bytes in self.pair_edges[pair]:
                    src, dst = (e_lo, e_hi) if forward else (e_hi, e_lo)
                    cost += self.transfer(src, dst, (prefill_bytes, decode_bytes))
            self._edge_memo[memo_key] = cost
        return cost

    def stream(self, u: int, place: int, main: int) -> float:
        """Seconds to stream unit `u`'s weights from `place` into `main` on every call."""
        total = 0.0
        for phase, w in self.weights:
            calls = self.calls[phase][u]
            if calls and w:
                try:
                    total += (
                        w * calls * self.model.stream_seconds(u, self.keys[place], self.keys[main], phase)
                    )
                except ValueError:
                    return inf
        return total

    # -- symmetry ---------------------------------------------------------------------------

    def _interchangeable(self) -> list[int]:
        """Class representative of each accelerator: the lowest one it may be swapped with
        (`CostModel.interchangeable_classes`); a pinned GPU, or an accelerator that is not a
        GPU, is a class of its own."""
        rep = list(range(len(self.acc)))
        free = [key for j, key in enumerate(self.acc) if j not in self.pinned_gpus and is_gpu(key)]
        position = {key: j for j, key in enumerate(self.acc)}
        for members in self.model.interchangeable_classes(free):
            for key in members:
                rep[position[key]] = position[members[0]]
        return rep

    def room_for(self, main: int) -> list[int]:
        """The GPUs a map with main device `main` may need: `main`, then of each class the first
        members above it, as many as an optimal map can use (`_class_bound`); all of them with
        ``devices_in_order`` unless every GPU is of one class."""
        gpus = list(range(main, len(self.acc)))
        if self.in_order and len(set(self._classes)) > 1:
            return gpus
        by_class: dict[int, list[int]] = {}
        for g in gpus:
            by_class.setdefault(self._classes[g], []).append(g)
        kept = []
        for members in by_class.values():
            kept += members[: self._class_bound(members[0], len(gpus) - len(members))]
        return sorted(kept)

    def _class_bound(self, gpu: int, others: int) -> int:
        """How many GPUs of `gpu`'s class some optimal map needs at most, with `others` GPUs of
        other classes beside them.

        Two blocks on twins that follow each other along the model merge onto the lower one
        without a dearer term (their edges become free, twins have alike links to every other
        device, the main device stays) when the merge fits. In a map where no such pair fits
        merged, each two of them hold more than ``cap - W`` bytes of the model's S (W the widest
        working set, a streamed unit's weights included), so a run of r twins holds at most
        2 S // (cap - W) + 1 of them; runs are separated by blocks of other classes. Twins then
        relabel in index order (`predecessors`), so the first members suffice.
        """
        key = self.keys[gpu]
        cap = self.model.limit(key) - self.model.overhead(key)
        everything = sum(self.param) + sum(self.buffer) + sum(self.cache)
        if cap <= self.widest:
            return self.n
        return min(self.n, 2 * (everything // (cap - self.widest)) + others + 1)

    def mains(self) -> list[int]:
        """Main devices to try: accelerators without a lower interchangeable twin, then the cpu."""
        found = [] if self.cpu_decode_path else [m for m in range(len(self.acc)) if self._classes[m] == m]
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


class _Option(NamedTuple):
    """One placement of a unit in a sub-problem."""

    place: int  # where its weights live
    runs_on: int  # where it executes: `place`, or the main device for an offloaded unit
    seconds: float  # compute there, plus streaming its weights in for an offloaded unit
    kind: int  # _BLOCK, _OFFLOAD or _RESIDENT
    nbytes: int  # bytes it adds to the sum of the device it runs on
    work: int  # its working set there (a streamed unit's weights included)


class _Problem:
    """The sub-problem with a fixed main device: the options of each unit and every device's room.

    `price[u][k]` is what option k of unit u adds to a map's latency before any edge from
    another unit: its seconds plus the transfer of the model's inputs to where it runs.
    """

    def __init__(self, inst: _Instance, main: int):
        self.inst = inst
        self.main = main
        model = inst.model
        self.gpu_main = gpu_main = main != inst.cpu
        self.gpus = gpus = inst.room_for(main) if gpu_main else []
        kept = set(gpus)
        self.all_gpus = sum(1 << g for g in gpus)
        self.sizes = [p + b + c for p, b, c in zip(inst.param, inst.buffer, inst.cache, strict=True)]
        self.limit = {d: model.limit(key) for d, key in enumerate(inst.keys)}
        self.over = {d: model.overhead(key) for d, key in enumerate(inst.keys)}
        self.cap = {d: max(0, self.limit[d] - self.over[d]) for d in (gpus or [main])}
        # a device whose limit holds everything the model could put there is not tracked
        everything = sum(self.sizes)
        widest = inst.widest
        self.track = {d: self.over[d] + everything + widest > self.limit[d] for d in gpus}
        self.track_main = self.over[main] + everything + widest > self.limit[main]
        self.track_cpu = gpu_main and self.over[inst.cpu] + sum(inst.param) > self.limit[inst.cpu]
        self.track_disk = self.over[inst.disk] + sum(inst.param) > self.limit[inst.disk]
        self.pred = inst.predecessors(main) if gpu_main else []
        self.options: list[list[_Option]] = []
        self.price: list[list[float]] = []
        for u in range(inst.n):
            streamed = inst.buffer[u] + inst.cache[u]
            opts = []
            for place in sorted(inst.allowed[u]) if inst.allowed is not None else []:
                if place < len(inst.acc):
                    if place in kept:
                        seconds = inst.compute[place][u]
                        opts.append(_Option(place, place, seconds, _BLOCK, self.sizes[u], inst.work[u]))
                elif not gpu_main and place == inst.cpu:
                    seconds = inst.compute[main][u]
                    opts.append(_Option(place, main, seconds, _RESIDENT, self.sizes[u], inst.work[u]))
                else:
                    seconds = inst.compute[main][u] + inst.stream(u, place, main)
                    opts.append(
                        _Option(place, main, seconds, _OFFLOAD, streamed, inst.streamed_work[place][u])
                    )
            opts = [o for o in opts if o.seconds < inf]
            self.options.append(opts)
            # the model's inputs live on the main device: seconds to bring them where the unit runs
            execs = {o.runs_on for o in opts}
            inputs = {e: sum(inst.transfer(main, e, b) for b in inst.inputs[u]) for e in execs}
            self.price.append([o.seconds + inputs[o.runs_on] for o in opts])
