"""Admissible lower bounds on what the rest of a map adds to a partial map's latency.

Branch and bound drops a label when its latency plus a bound on the units after it reaches the
best complete map known. Each bound is a relaxation of the sub-problem (`_Problem`) and never
exceeds the true price of completing a state (edges among the units still to place taken free):

1. each unit at its cheapest placement (`_Bounds.rest`);
2. the structure bound: each unit at its cheapest placement on a GPU still open to it, edges
   from producers already placed priced, the rest of an open tied group at its forced placement;
3. the most common kind of unit (a decoder layer) placed greedily in whole units on the
   cheapest devices with room, cpu and disk included, the others at their cheapest;
4. the GPUs' room pooled, what cannot fit streaming at the least price per byte (a fractional
   knapsack), its weights filling the cpu before the disk;
5. a Lagrangian relaxation of every device's room (Fisher, "The Lagrangian relaxation method for
   solving integer programming problems", Management Science 27(1), 1981) at the dual prices of a
   transportation LP, solved by successive shortest paths (Ahuja, Magnanti and Orlin, "Network
   Flows", 1993, ch. 9).

The tables are built once per sub-problem (the LP on one node per distinct kind of unit), what a
state needs of them once per state (`_Bounds.state_context`); bounds 3 and 4 are finished per
label, in the search (`labels._search`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from math import inf
from typing import NamedTuple

from tuner.plan.exact.instance import _BLOCK
from tuner.plan.exact.instance import _OFFLOAD
from tuner.plan.exact.instance import _Option
from tuner.plan.exact.instance import _PairEdge
from tuner.plan.exact.instance import _Problem

#: Long-range producers whose device a state knows: (unit, device) pairs.
_Known = tuple[tuple[int, int], ...]
#: What bound 2 knows of a unit: its cheapest block per GPU, its cheapest price on the main
#: device, and the edges from the long-range producers that feed it.
_StructureKind = tuple[tuple[tuple[int, float], ...], float, tuple[tuple[int, tuple[_PairEdge, ...]], ...]]


class _UnitKind(NamedTuple):
    """What bound 3 knows of a unit; units with equal kinds are interchangeable to it."""

    size: int  # weights, buffers and cache
    work: int  # working set
    on_device: tuple[tuple[int, float], ...]  # (device it runs on, cheapest price there), resident
    streamed: tuple[tuple[int, float], ...]  # (cpu or disk, cheapest price streaming from there)
    param: int  # weights
    streamed_work: int  # least working set streamed in, its weights included (0: never streamed)


class _Savings(NamedTuple):
    """Bytes a suffix can free on the GPUs by streaming, cheapest per byte first (bound 4)."""

    cum_bytes: list[int]  # bytes freed, cumulated over the ratios
    cum_cost: list[float]  # seconds that costs, cumulated likewise
    ratios: list[float]  # seconds per byte freed, ascending


class _CommonSize(NamedTuple):
    """The suffix's most common unit size: a device fills with whole units of it, plus the rest."""

    size: int  # the size that accounts for most bytes
    others: int  # bytes of the units of other sizes
    streamed: int  # buffer and cache bytes of the units of that size (left behind when they stream)


class _StreamWork(NamedTuple):
    """The units of a suffix that may stream, by the working set streaming them needs."""

    works: list[int]  # distinct working sets with the weights streamed in, ascending
    cum_param: list[int]  # weight bytes of the units up to each working set


def _least_streamed_work(options: list[_Option]) -> int:
    """The least working set a unit has streamed in, its weights included; 0 when it cannot be."""
    return min((o.work for o in options if o.kind == _OFFLOAD), default=0)


class _Future(NamedTuple):
    """The most the units of a suffix can add, to tell when a device can no longer overflow."""

    nbytes: int  # weights, buffers and cache
    streamed: int  # buffers and cache (what a streamed unit leaves on the main device)
    params: int  # weights (what a streamed unit puts on the cpu or disk)
    work: int  # largest working set
    streamed_work: int  # largest working set with the weights streamed in


class _Rooms(NamedTuple):
    """The parts of a state's bounds that depend on its GPUs alone (the state's block and the
    GPUs it has used), for the units after a position. The search unpacks it in field order:
    reading a named tuple's fields one by one costs far more there, once per state and move."""

    avail: int  # bitmask of the GPUs a block may still be on
    lagrange: float  # bound 5 less the priced room of the free GPUs (the main and open ones apart)
    free_room: int  # bytes the free GPUs can fill
    free_rooms: list[tuple[float, int]]  # per free GPU: price of a dominant unit there, how many fit
    main_closed: bool  # the main device's block is closed: nothing more may go there
    variant: int  # which tables of bounds 4 and 5 apply: 1 when the main block is closed
    need: int  # bytes the units need on the GPUs at their cheapest placement
    other_block: bool  # the open block is on a GPU other than the main device
    block_lam: float  # bound 5's price of the open block's room
    block_cap: int  # the open block's GPU's room
    dom_main: float  # price of a dominant unit on the main device (inf when closed)
    dom_block: float  # price of a dominant unit in the open block (inf when none)
    main_may_add: int  # the most the units can still add to the main device
    block_more: int  # the most they can add to the open block, less its room (<= 0: cannot overflow)
    free_fits: int  # dominant units that fit on the free GPUs


class _Context(NamedTuple):
    """What the bounds need of a state, computed once per state (the search unpacks it too)."""

    structure: float  # bound 2 on the units after it
    rooms: _Rooms


@dataclass(slots=True)
class _Arc:
    """An arc of the residual network of bound 5's transportation LP."""

    to: int
    room: float
    cost: float
    reverse: int  # index of the opposite arc in the list of `to`


def _shortest_paths(graph: list[list[_Arc]], source: int | None) -> tuple[list[float], list[tuple[int, int]]]:
    """Bellman-Ford over arcs with room left; from every node at once when `source` is None."""
    size = len(graph)
    dist = [inf] * size if source is not None else [0.0] * size
    if source is not None:
        dist[source] = 0.0
    back: list[tuple[int, int]] = [(-1, -1)] * size  # (node, index of the arc) it was reached by
    for _ in range(size):
        changed = False
        for a in range(size):
            if dist[a] == inf:
                continue
            for k, arc in enumerate(graph[a]):
                if arc.room > 0 and dist[a] + arc.cost < dist[arc.to] - 1e-18:
                    dist[arc.to] = dist[a] + arc.cost
                    back[arc.to] = (a, k)
                    changed = True
        if not changed:
            break
    return dist, back


def _fillable(room: int, size: int, others: int) -> int:
    """Most bytes a device with `room` can hold of whole units of `size` plus `others` bytes."""
    return min(room, room // size * size + others) if size else room


class _Bounds:
    """The tables of the bounds of one sub-problem, per suffix of units (index u: units u..)."""

    def __init__(self, problem: _Problem):
        self.problem = problem
        n = problem.inst.n
        # 1. each unit at its cheapest placement;
        self.rest = [0.0] * (n + 1)
        for u in range(n - 1, -1, -1):
            self.rest[u] = self.rest[u + 1] + min(problem.price[u], default=inf)
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
        problem = self.problem
        inst = problem.inst
        n = inst.n
        self.on_gpu: list[dict[int, float]] = []  # unit -> GPU -> cheapest price of a block there
        self.anywhere: list[float] = []  # unit -> cheapest price running on the main device
        for u in range(n):
            on_gpu: dict[int, float] = {}
            anywhere = inf
            for option, price in zip(problem.options[u], problem.price[u], strict=True):
                if option.kind == _BLOCK:
                    on_gpu[option.place] = min(on_gpu.get(option.place, inf), price)
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
        # units alike to this bound share one memo entry per context
        kinds: dict[_StructureKind, int] = {}
        self.structure_kind = [
            kinds.setdefault(
                (tuple(sorted(self.on_gpu[u].items())), self.anywhere[u],
                 tuple((lo, tuple(inst.pair_edges[pair])) for lo, pair in sorted(self.feeds[u]))),
                len(kinds),
            )
            for u in range(n)
        ]  # fmt: skip
        self._suffix: dict[tuple[int, _Known], list[float]] = {}
        self._unit_bound: dict[tuple[int, tuple[int, _Known]], float] = {}
        self._rooms: dict[tuple[int, int, int], _Rooms] = {}

    def structure_bound(self, v: int, avail: int, known: _Known) -> float:
        """Least price of units v.. when blocks may only open on the GPUs of bitmask `avail` and
        the long-range producers in `known` run where it says."""
        inst = self.problem.inst
        n = inst.n
        ctx = (avail, known)
        table = self._suffix.get(ctx)
        if table is None:
            table = self._suffix[ctx] = [inf] * n + [0.0]
        if v == n or table[v] < inf:
            return table[v]
        where = dict(known)
        top = v
        while top + 1 < n and table[top + 1] == inf:
            top += 1
        for w in range(top, v - 1, -1):
            memo_key = (self.structure_kind[w], ctx)
            price = self._unit_bound.get(memo_key)
            if price is None:
                feeds = [(where[lo], pair) for lo, pair in self.feeds[w] if lo in where]
                price = self.anywhere[w]
                if price < inf:
                    for e, pair in feeds:
                        price += inst.pair_cost(pair, e, self.problem.main)
                for g, on_g in self.on_gpu[w].items():
                    if avail >> g & 1 and on_g < price:
                        for e, pair in feeds:
                            on_g += inst.pair_cost(pair, e, g)
                        price = min(price, on_g)
                self._unit_bound[memo_key] = price
            table[w] = table[w + 1] + price
        return table[v]

    # -- bound 3: the dominant kind of unit ---------------------------------------------------

    def _dominant_tables(self) -> None:
        problem = self.problem
        inst = problem.inst
        n = inst.n
        kinds: list[_UnitKind] = []
        for u in range(n):
            on_device: dict[int, float] = {}
            streamed: dict[int, float] = {}
            for option, price in zip(problem.options[u], problem.price[u], strict=True):
                if option.kind == _OFFLOAD:
                    streamed[option.place] = min(streamed.get(option.place, inf), price)
                else:
                    on_device[option.runs_on] = min(on_device.get(option.runs_on, inf), price)
            kinds.append(_UnitKind(problem.sizes[u], inst.work[u], tuple(sorted(on_device.items())),
                                   tuple(sorted(streamed.items())), inst.param[u],
                                   _least_streamed_work(problem.options[u])))  # fmt: skip
        # per suffix: the kind with most units, how many, and the cheapest price of the others
        self.dominant: list[_UnitKind | None] = [None] * (n + 1)
        self.dominant_count = [0] * (n + 1)
        self.others_rest = [0.0] * (n + 1)
        counts: dict[_UnitKind, int] = {}
        for u in range(n - 1, -1, -1):
            counts[kinds[u]] = counts.get(kinds[u], 0) + 1
            dominant = max(counts, key=counts.__getitem__)
            cheapest = min((c for _, c in dominant.on_device + dominant.streamed), default=inf)
            self.dominant[u] = dominant
            self.dominant_count[u] = counts[dominant]
            self.others_rest[u] = self.rest[u] - counts[dominant] * cheapest if self.rest[u] < inf else inf

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
        return inf

    # -- bound 4: pooled room -----------------------------------------------------------------

    def _pooled_tables(self) -> None:
        """Per suffix: the bytes its units need on the GPUs at their cheapest placement, and the
        cheapest way (seconds per byte saved, best first) to save bytes by streaming some of
        them. Variant 0 pools the main device with the GPUs (a streamed unit still leaves its
        buffers and cache there); variant 1 leaves the main device out (its block is closed)."""
        problem = self.problem
        inst = problem.inst
        n = inst.n
        sizes = problem.sizes
        self.need = ([0] * (n + 1), [0] * (n + 1))
        empty = _Savings([], [], [])
        self.saving = ([empty] * (n + 1), [empty] * (n + 1))
        for variant in (0, 1):
            need, saving = self.need[variant], self.saving[variant]
            by_ratio: dict[float, list[float]] = {}  # seconds per byte -> [bytes, seconds]
            for u in range(n - 1, -1, -1):
                pairs = list(zip(problem.options[u], problem.price[u], strict=True))
                resident = [p for o, p in pairs if o.kind != _OFFLOAD]
                streamed = [p for o, p in pairs if o.kind == _OFFLOAD]
                bytes_off = 0 if variant else inst.buffer[u] + inst.cache[u]
                if resident and (not streamed or min(resident) <= min(streamed)):
                    need[u] = need[u + 1] + sizes[u]
                    if streamed and sizes[u] > bytes_off:
                        extra = min(streamed) - min(resident)
                        entry = by_ratio.setdefault(extra / (sizes[u] - bytes_off), [0, 0.0])
                        entry[0] += sizes[u] - bytes_off
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
                saving[u] = _Savings(cum_bytes, cum_cost, ratios)
        # where streamed weights go: per suffix, the fewest weight bytes per byte saved on the
        # GPUs, the weights that stream at their cheapest placement (from the cpu), and the least
        # extra price per byte of reading from disk instead of the cpu
        self.weight_ratio = ([1.0] * (n + 1), [1.0] * (n + 1))
        self.base_streamed = [0] * (n + 1)
        self.disk_surcharge = [inf] * (n + 1)
        for u in range(n - 1, -1, -1):
            pairs = list(zip(problem.options[u], problem.price[u], strict=True))
            streamed_at = {o.place: p for o, p in pairs if o.kind == _OFFLOAD}
            resident = [p for o, p in pairs if o.kind != _OFFLOAD]
            param = inst.param[u]
            self.weight_ratio[0][u] = self.weight_ratio[0][u + 1]
            self.weight_ratio[1][u] = self.weight_ratio[1][u + 1]
            if streamed_at and param:
                self.weight_ratio[1][u] = min(self.weight_ratio[1][u], param / sizes[u])
            base = 0
            if streamed_at and (not resident or min(streamed_at.values()) < min(resident)):
                if streamed_at.get(inst.cpu, inf) <= min(streamed_at.values()):
                    base = param
            self.base_streamed[u] = self.base_streamed[u + 1] + base
            surcharge = self.disk_surcharge[u + 1]
            if param and inst.cpu in streamed_at and inst.disk in streamed_at:
                surcharge = min(surcharge, (streamed_at[inst.disk] - streamed_at[inst.cpu]) / param)
            self.disk_surcharge[u] = surcharge
        # the bytes a device can really fill: some units of the suffix's most common size plus
        # at most all the others, so room beyond the last whole unit of that size is wasted
        self.common = [_CommonSize(0, 0, 0)] * (n + 1)
        self.least_work = [0] * (n + 1)
        by_size: dict[int, list[int]] = {}  # size -> [bytes, buffer and cache bytes]
        for u in range(n - 1, -1, -1):
            tally = by_size.setdefault(sizes[u], [0, 0])
            tally[0] += sizes[u]
            tally[1] += inst.buffer[u] + inst.cache[u]
            size = max(by_size, key=lambda k: by_size[k][0])
            others = sum(v[0] for v in by_size.values()) - by_size[size][0]
            self.common[u] = _CommonSize(size, others, by_size[size][1])
            self.least_work[u] = min(inst.work[u], self.least_work[u + 1]) if u < n - 1 else inst.work[u]
        # streaming `excess` bytes needs units whose weights pass through the main device's
        # working set: their working sets ascending, with the bytes streaming them saves
        self.stream_work = [_StreamWork([], [])] * (n + 1)
        for u in range(n - 1, -1, -1):
            streamable = [v for v in range(u, n) if any(o.kind == _OFFLOAD for o in problem.options[v])]
            rows = sorted(
                (_least_streamed_work(problem.options[v]), inst.param[v]) for v in streamable if inst.param[v]
            )
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
            self.stream_work[u] = _StreamWork(works, cum)
        self.future = [_Future(0, 0, 0, 0, 0)] * (n + 1)
        for u in range(n - 1, -1, -1):
            after = self.future[u + 1]
            self.future[u] = _Future(
                after.nbytes + sizes[u],
                after.streamed + inst.buffer[u] + inst.cache[u],
                after.params + inst.param[u],
                max(after.work, inst.work[u]),
                max(after.streamed_work, max((o.work for o in problem.options[u]), default=0)),
            )

    def streaming_at_least(self, variant: int, u: int, excess: int) -> float:
        """Least extra seconds for units u.. to free `excess` bytes of GPU memory (fractional)."""
        cum_bytes, cum_cost, ratios = self.saving[variant][u]
        if not cum_bytes or excess > cum_bytes[-1]:
            return inf
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
        problem = self.problem
        n = problem.inst.n
        main = problem.main
        self.lam = lam = self._prices()
        self.lagrange = ([0.0] * (n + 1), [0.0] * (n + 1))
        for variant in (0, 1):
            table = self.lagrange[variant]
            for u in range(n - 1, -1, -1):
                cheapest = min(
                    (p + (0.0 if variant and o.runs_on == main else lam[o.runs_on]) * o.nbytes
                     for o, p in zip(problem.options[u], problem.price[u], strict=True)
                     if not (variant and o.kind == _BLOCK and o.place == main)),
                    default=inf,
                )  # fmt: skip
                table[u] = table[u + 1] + cheapest

    def _prices(self) -> dict[int, float]:
        """Capacity prices (seconds per byte) that make the Lagrangian bound tight at the root:
        the optimal duals of the transportation LP that sends every unit's bytes to a device of
        limited room or, at its streaming price, to an unlimited sink (streaming's small charge
        on the main device relaxed away), by successive shortest paths. Any prices give a valid
        bound; these a tight one."""
        problem = self.problem
        cap = problem.cap
        lam = dict.fromkeys(cap, 0.0)
        # units with the same options are one node: (runs on, streams, bytes, price) per option
        kinds: dict[tuple[tuple[int, bool, int, float], ...], int] = {}
        for u, opts in enumerate(problem.options):
            row = tuple(
                (o.runs_on, o.kind == _OFFLOAD, o.nbytes, p)
                for o, p in zip(opts, problem.price[u], strict=True)
            )
            kinds[row] = kinds.get(row, 0) + 1
        # nodes: 0 source, 1 sink, 2 streaming, then devices, then kinds of unit
        devices = list(cap)
        node_of = {d: 3 + k for k, d in enumerate(devices)}
        graph: list[list[_Arc]] = [[] for _ in range(3 + len(devices))]

        def arc(a: int, b: int, room: float, cost: float) -> None:
            graph[a].append(_Arc(b, room, cost, len(graph[b])))
            graph[b].append(_Arc(a, 0, -cost, len(graph[a]) - 1))

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
                arc(node, 2 if off else node_of[ex], inf, price / size)
        arc(2, 1, inf, 0.0)
        for d in devices:
            arc(node_of[d], 1, cap[d], 0.0)
        sent: float = 0  # bytes, but the arcs' room may be inf
        while sent < supply:
            dist, back = _shortest_paths(graph, 0)
            if dist[1] == inf:
                return lam  # even the relaxation cannot place everything: no prices help
            push, node = supply - sent, 1
            while node != 0:
                a, k = back[node]
                push = min(push, graph[a][k].room)
                node = a
            node = 1
            while node != 0:
                a, k = back[node]
                edge = graph[a][k]
                edge.room -= push
                graph[edge.to][edge.reverse].room += push
                node = a
            sent += push
        potential, _ = _shortest_paths(graph, None)  # a feasible potential gives the duals
        for d in devices:
            lam[d] = max(0.0, potential[1] - potential[node_of[d]])
        return lam

    # -- per sub-problem and per state ----------------------------------------------------------

    def root_bound(self) -> float:
        """A lower bound on every map of this sub-problem."""
        problem = self.problem
        n = problem.inst.n
        bound = max(
            self.rest[0], self.lagrange[0][0] - sum(self.lam[d] * problem.cap[d] for d in problem.cap)
        )
        kind = self.dominant[0] if n else None
        if kind is not None:
            size, param = kind.size, kind.param
            rooms = [
                (c, max(0, problem.cap[d] - kind.work) // size if size else n) for d, c in kind.on_device
            ]
            for place, c in kind.streamed:
                tracked = problem.track_cpu if place == problem.inst.cpu else problem.track_disk
                room = problem.limit[place] - problem.over[place]
                rooms.append((c, max(0, room) // param if tracked and param else n))
            bound = max(bound, self.others_rest[0] + self.greedy_dominant(0, rooms))
        return bound

    def state_context(
        self, u: int, used: int, block: int, producers: tuple[int, ...], ties: tuple[int, ...]
    ) -> _Context | None:
        """What the bounds need of a state after unit u, computed once per state; None for a
        state no map can complete. The state's fields are `labels._State`'s."""
        inst = self.problem.inst
        v = u + 1
        rooms_key = (used, block, v)
        rooms = self._rooms.get(rooms_key)
        if rooms is None:
            rooms = self._rooms[rooms_key] = self._room_context(used, block, v)
        avail = rooms.avail
        open_after = inst.open_after[u]
        known = tuple((j, producers[k]) for k, j in enumerate(open_after) if j in self.long_range)
        structure = self.structure_bound(v, avail, known)
        if ties:
            # the rest of an open tied group must take the placement its first unit took ...
            options, prices = self.problem.options, self.problem.price
            forced = {}
            for group, place in zip(inst.open_ties[u], ties, strict=True):
                for w in inst.ties[group]:
                    if w > u:
                        pairs = zip(options[w], prices[w], strict=True)
                        forced[w] = min((p for o, p in pairs if o.place == place), default=inf)
            bounds = self._unit_bound
            kind = self.structure_kind
            structure += sum(max(0.0, forced[w] - bounds[(kind[w], (avail, known))]) for w in forced)
            for group, place in zip(inst.open_ties[u], ties, strict=True):
                # ... and on a GPU, that block stays open (the only one) until the group's last unit
                if place < len(inst.acc):
                    if place != block:
                        return None
                    last, only = inst.ties[group][-1] + 1, (1 << place, known)
                    through = self.structure_bound(v, *only) - self.structure_bound(last, *only)
                    through += sum(max(0.0, forced[w] - bounds[(kind[w], only)])
                                   for w in inst.ties[group] if w > u)  # fmt: skip
                    structure = max(structure, through + self.structure_bound(last, avail, known))
        if structure == inf:
            return None
        return tuple.__new__(_Context, (structure, rooms))  # the class's own __new__ is slower

    def _room_context(self, used: int, block: int, v: int) -> _Rooms:
        """The parts of a state's bounds that depend on its GPUs alone: GPUs still available,
        their room (in bytes, and in dominant units at their price), the Lagrangian base."""
        problem = self.problem
        main, cap, lam = problem.main, problem.cap, self.lam
        if problem.inst.in_order:
            avail = problem.all_gpus if block < 0 else problem.all_gpus & ~((1 << block) - 1)
            free = [g for g in problem.gpus if g != main and g > block]
        else:
            avail = problem.all_gpus & ~used | (1 << block if block >= 0 else 0)
            free = [g for g in problem.gpus if g != main and g != block and not used >> g & 1]
        other_block = block >= 0 and block != main
        main_used = block >= 0 if problem.inst.in_order else bool(used >> main & 1)
        main_closed = problem.gpu_main and other_block and main_used
        variant = 1 if main_closed else 0
        common = self.common[v]
        least = self.least_work[v]
        fills = [_fillable(max(0, cap[g] - least), common.size, common.others) for g in free]
        lagrange = self.lagrange[variant][v] - sum(lam[g] * f for g, f in zip(free, fills, strict=True))
        free_rooms: list[tuple[float, int]] = []
        dom_main = dom_block = inf
        kind = self.dominant[v]
        if kind is not None:
            prices = dict(kind.on_device)
            for g in free:
                if g in prices:
                    fits = max(0, cap[g] - kind.work) // kind.size if kind.size else problem.inst.n
                    free_rooms.append((prices[g], fits))
            dom_main = inf if main_closed else prices.get(main, inf)
            dom_block = prices.get(block, inf) if other_block else inf
        future = self.future[v]
        need = self.need[variant][v]
        block_lam = lam[block] if other_block else 0.0
        block_cap = cap[block] if other_block else 0
        main_may_add = future.streamed if main_closed else future.nbytes
        block_more = future.nbytes + problem.over[block] - problem.limit[block] if other_block else 0
        free_room = sum(fills)
        free_fits = sum(fits for _, fits in free_rooms)
        # positional: a named tuple built from keywords costs nearly three times as much
        return _Rooms(
            avail, lagrange, free_room, free_rooms, main_closed, variant, need, other_block, block_lam,
            block_cap, dom_main, dom_block, main_may_add, block_more, free_fits,
        )  # fmt: skip
