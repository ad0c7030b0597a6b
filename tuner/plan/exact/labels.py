"""The label-setting dynamic programme over the units in execution order.

The resource-constrained shortest path technique of Desrochers and Soumis ("A generalized
permanent labelling algorithm for the shortest path problem with time windows", INFOR 26(3),
1988), with a bitmask over the GPUs used (Held and Karp, "A dynamic programming approach to
sequencing problems", J. SIAM 10(1), 1962) so that every order of GPUs is tried, and branch and
bound on the bounds of `bounds.py`.

* A state (`_State`) after unit i: the set of GPUs used (bitmask; not needed with
  ``devices_in_order``), the GPU of the open block, the device of every unit with an edge past
  i (the previous unit, and producers such as ``rotary_emb`` or a T5 encoder's output that feed
  every later layer), and the placement of every tied group still open.
* A label (`_Label`) of a state: latency so far; main device's running sum and running max of
  working sets; cpu and disk loads; the open block's running sum and max. Resources only grow
  along a path, so a label no worse in latency and in every resource dominates: the Pareto set
  of each state (`_pareto`) is exact. A resource that no placement of the rest could overflow is
  dropped (so more labels merge), as is a device whose limit holds the whole model.
* Branch and bound: a label is dropped when its latency plus an admissible bound on the rest
  reaches the best complete map known; with a beam, only the labels with the best bounds
  survive each unit (a fast heuristic pass whose map bounds the exact one).

Complexity: O(L x 2^K x K x P) states for L units, K GPUs and P tuples of devices of open
producers (1 to K^2 in real models), each with a Pareto set of labels and O(K) moves per label;
`solver` says how large the sets grow.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable
from math import inf
from operator import attrgetter
from time import monotonic
from typing import NamedTuple

from tuner.plan.exact.bounds import _Bounds
from tuner.plan.exact.bounds import _Context
from tuner.plan.exact.bounds import _UnitKind
from tuner.plan.exact.instance import _BLOCK
from tuner.plan.exact.instance import _OFFLOAD
from tuner.plan.exact.instance import _Problem

#: Relative slack when pruning against the best map found: sums in a different order than
#: ``predict`` differ in the last bits, never by this much.
_PRUNE_RTOL = 1e-12

#: Stands in for the dominant kind of unit when no unit is left.
_NO_KIND = _UnitKind(0, 0, (), (), 0, 0)


class _State(NamedTuple):
    """Where a partial map of units ..i stands, as far as the units after i can tell."""

    used: int  # bitmask of the GPUs holding a block (0 with devices_in_order: `block` tells)
    block: int  # the GPU of the open block, -1 before the first
    reaching: tuple[int, ...]  # the device each unit with an edge past i runs on (inst.open_after[i])
    ties: tuple[int, ...]  # the placement of each tied group still open (inst.open_ties[i])


class _Label(NamedTuple):
    """A partial map reaching a state: its latency and resources, and how it got there.

    A resource of -1 can no longer overflow, whatever the rest of the map does: it is no longer
    tracked, so labels that differ only there merge. The hot loops unpack a label in field order
    and build one with ``tuple.__new__``: reading fields by name and calling the class cost
    several times more there, once per label.
    """

    latency: float
    main_sum: int  # bytes on the main device
    main_max: int  # largest working set on the main device
    cpu_load: int  # weights streamed from the cpu, with its overhead once any is there
    disk_load: int  # weights streamed from the disk, likewise
    block_sum: int  # bytes of the open block (on a GPU other than the main device)
    block_max: int  # largest working set of the open block
    parent: _Label | None  # the label of the previous unit; None at the start
    place: int  # where the last unit went
    promise: float  # the best bound on a completion: the beam keeps the lowest


#: Latency, then the resources: a label sorts before every label of equal latency it dominates.
_LATENCY_THEN_RESOURCES = attrgetter(
    "latency", "main_sum", "main_max", "cpu_load", "disk_load", "block_sum", "block_max"
)


class _Found(NamedTuple):
    """The best map of a sub-problem: its latency and each unit's placement."""

    latency: float
    placements: list[int]


def _pareto(labels: list[_Label]) -> list[_Label]:
    """The labels no other label dominates (no worse in latency and in every resource)."""
    labels.sort(key=_LATENCY_THEN_RESOURCES)
    kept: list[_Label] = []
    # the kept labels' resources beside them, as plain tuples: this quadratic loop is the solver's
    # hottest, and a plain tuple unpacks fastest
    kept_resources: list[tuple[int, int, int, int, int, int]] = []
    for label in labels:
        _, main_sum, main_max, cpu_load, disk_load, block_sum, block_max, _, _, _ = label
        for ms, mx, cl, dl, bs, bm in kept_resources:
            if (ms <= main_sum and mx <= main_max and cl <= cpu_load and dl <= disk_load
                    and bs <= block_sum and bm <= block_max):  # fmt: skip
                break
        else:
            kept.append(label)
            kept_resources.append((main_sum, main_max, cpu_load, disk_load, block_sum, block_max))
    return kept


class _OutOfTime(Exception):
    """The search passed its deadline; `floor` is what it had proven by then: every map of the
    sub-problem cheaper than the search's `bound` costs at least that much."""

    def __init__(self, floor: float) -> None:
        super().__init__(floor)
        self.floor = floor


def _frontier_floor(labels: Iterable[list[_Label]]) -> float:
    """The least promise among the labels of a frontier: every map the search has not cut off
    extends one of them (a dominated label's completions are matched by its dominator's), and
    a promise bounds every completion of its label."""
    return min((label.promise for bucket in labels for label in bucket), default=inf)


def _search(
    problem: _Problem, bounds: _Bounds, bound: float, beam: int = 0, deadline: float = inf
) -> _Found | None:
    """The best map of `problem` cheaper than `bound`.

    With `beam`, only that many labels (the most promising by their bound) survive each
    unit: a fast heuristic pass whose result bounds the exact one. A label is pruned only
    when a bound shows every completion reaches `bound`; without `bound` (inf) by dominance
    and memory alone.

    Raises:
        _OutOfTime: `time.monotonic()` passed `deadline` (checked once per state), with the
            least promise of the frontier: the labels of the states not yet expanded and the
            children of those that were (-inf in a beam pass, which proves nothing).
    """
    inst = problem.inst
    n = inst.n
    main, gpu_main, in_order = problem.main, problem.gpu_main, inst.in_order
    limit, over, track, pred, cap = problem.limit, problem.over, problem.track, problem.pred, problem.cap
    param = inst.param
    track_main, track_cpu, track_disk = problem.track_main, problem.track_cpu, problem.track_disk
    main_room, cap_main, lam_main = limit[main] - over[main], cap[main], bounds.lam[main]
    cpu, cpu_limit, cpu_over = inst.cpu, limit[inst.cpu], over[inst.cpu]
    disk_limit, disk_over = limit[inst.disk], over[inst.disk]
    greedy_dominant, streaming_at_least = bounds.greedy_dominant, bounds.streaming_at_least
    cutoff = bound * (1 - _PRUNE_RTOL) if bound < inf else inf
    root = bounds.root_bound()
    if root >= cutoff:
        return None
    layer = {_State(0, -1, (), ()): [_Label(0.0, 0, 0, 0, 0, 0, 0, None, -1, root)]}
    for u in range(n):
        x_recipe, x_lookup = inst.x_recipe[u], inst.x_lookup[u]
        t_check, t_recipe = inst.t_check[u], inst.t_recipe[u]
        v = u + 1
        # what the bounds know of the units after u, the same for every label
        rest_after, others_after = bounds.rest[v], bounds.others_rest[v]
        common = bounds.common[v]
        size, others = common.size, common.others
        others_main = common.streamed + others
        stream_works, stream_cum = bounds.stream_work[v].works, bounds.stream_work[v].cum_param
        ratios = (bounds.weight_ratio[0][v], bounds.weight_ratio[1][v])
        base_streamed, surcharge = bounds.base_streamed[v], bounds.disk_surcharge[v]
        split_offload = gpu_main and surcharge < inf
        dominant = bounds.dominant[v]
        dom = dominant or _NO_KIND
        dom_size, dom_work, dom_streamed, dom_param = dom.size, dom.work, dom.streamed, dom.param
        dom_count = bounds.dominant_count[v]
        future = bounds.future[v]
        future_params, future_block_work, future_main_work = future.params, future.work, future.streamed_work
        contexts: dict[_State, _Context | None] = {}
        children: dict[_State, list[_Label]] = {}
        frontier = list(layer.items())
        for expanded, (state, labels) in enumerate(frontier):
            if deadline < inf and monotonic() > deadline:
                if beam:
                    raise _OutOfTime(-inf)  # a beam drops labels: its frontier proves nothing
                waiting = (labels for _, labels in frontier[expanded:])
                raise _OutOfTime(min(_frontier_floor(children.values()), _frontier_floor(waiting)))
            used, block, reaching, ties = state.used, state.block, state.reaching, state.ties
            for (place, runs_on, _, kind, nbytes, work), price in zip(
                problem.options[u], problem.price[u], strict=True
            ):
                if t_check >= 0 and ties[t_check] != place:
                    continue  # a tied group shares one placement
                new_block = kind == _BLOCK and place != block
                if new_block:
                    if in_order:
                        if (place != main) if block < 0 else (place < block):
                            continue
                    elif used >> place & 1 or (pred[place] >= 0 and not used >> pred[place] & 1):
                        continue  # a GPU holds one block; twins open in index order
                step = price
                for k, pair in x_lookup:
                    if reaching[k] != runs_on:
                        step += inst.pair_cost(pair, reaching[k], runs_on)
                if step >= inf:
                    continue
                # once per state and move: a named tuple built without its class's slower __new__
                child = tuple.__new__(_State, (
                    (0 if in_order else used | 1 << place) if new_block else used,
                    place if new_block else block,
                    tuple(runs_on if j < 0 else reaching[j] for j in x_recipe),
                    tuple(place if j < 0 else ties[j] for j in t_recipe),
                ))  # fmt: skip
                bucket = children.get(child)
                if bucket is None:
                    bucket = children[child] = []
                    contexts[child] = bounds.state_context(
                        u, child.used, child.block, child.reaching, child.ties
                    )
                context = contexts[child]
                if context is None:
                    continue
                structure, rooms = context
                (_avail, lagrange, free_room, free_rooms, main_closed, variant, need, other_block, block_lam,
                 block_cap, dom_main, dom_block, main_may_add, block_more, free_fits) = rooms  # fmt: skip
                after = cutoff - structure
                on_main = kind != _BLOCK or place == main
                for label in labels:
                    latency, main_sum, main_max, cpu_load, disk_load, block_sum, block_max, _, _, _ = label
                    cost = latency + step
                    if cost >= after:
                        continue
                    # -- memory: add the unit where it lives and runs; drop what overflows
                    if on_main:
                        if main_sum >= 0 and track_main:
                            main_sum += nbytes
                            if work > main_max:
                                main_max = work
                            if main_sum + main_max > main_room:
                                continue
                            widest = main_max if main_max > future_main_work else future_main_work
                            if main_sum + main_may_add + widest <= main_room:
                                main_sum = main_max = -1
                        if new_block:
                            block_sum = block_max = 0
                        if kind == _OFFLOAD:
                            if place == cpu:
                                if cpu_load >= 0 and track_cpu:
                                    cpu_load = (cpu_load or cpu_over) + param[u]
                                    if cpu_load > cpu_limit:
                                        continue
                                    if cpu_load + future_params <= cpu_limit:
                                        cpu_load = -1
                            elif disk_load >= 0 and track_disk:
                                disk_load = (disk_load or disk_over) + param[u]
                                if disk_load > disk_limit:
                                    continue
                                if disk_load + future_params <= disk_limit:
                                    disk_load = -1
                    elif track[place]:
                        if new_block:
                            block_sum, block_max = nbytes, work
                        elif block_sum >= 0:
                            block_sum += nbytes
                            if work > block_max:
                                block_max = work
                        if block_sum >= 0:
                            if block_sum + block_max + over[place] > limit[place]:
                                continue
                            widest = block_max if block_max > future_block_work else future_block_work
                            if block_sum + block_more + widest <= 0:
                                block_sum = block_max = -1
                    elif new_block:
                        block_sum = block_max = 0
                    # -- bounds on the rest: drop the label when one reaches the best map
                    room_main = cap_main - main_sum - main_max
                    room_block = block_cap - block_sum - block_max if other_block else 0
                    fill_block = room_block
                    if size:
                        whole = room_block // size * size + others
                        if whole < room_block:
                            fill_block = whole
                    if main_closed or not size:
                        fill_main = room_main
                    else:
                        whole = room_main // size * size + others_main
                        fill_main = whole if whole < room_main else room_main
                    promise = cost + lagrange - block_lam * fill_block
                    if not main_closed:
                        promise -= lam_main * fill_main
                    if promise >= cutoff:
                        continue
                    if cost + structure > promise:
                        promise = cost + structure
                    if dominant is not None:
                        dom_rooms = list(free_rooms)
                        on_gpus = free_fits
                        if dom_block < inf:
                            room = block_cap - block_sum - (block_max if block_max > dom_work else dom_work)
                            fits = (room // dom_size if dom_size else n) if room > 0 else 0
                            dom_rooms.append((dom_block, fits))
                            on_gpus += fits
                        if dom_main < inf:
                            room = cap_main - main_sum - (main_max if main_max > dom_work else dom_work)
                            fits = (room // dom_size if dom_size else n) if room > 0 else 0
                            if on_gpus + fits < dom_count and dom_streamed:
                                # some stream, so their weights pass through the main device
                                streamed_work = dom.streamed_work
                                widest = main_max if main_max > streamed_work else streamed_work
                                room = cap_main - main_sum - widest
                                fits = (room // dom_size if dom_size else n) if room > 0 else 0
                            dom_rooms.append((dom_main, fits))
                        for where, dom_price in dom_streamed:
                            load = cpu_load if where == cpu else disk_load
                            tracked = track_cpu if where == cpu else track_disk
                            if load < 0 or not dom_param or not tracked:
                                dom_rooms.append((dom_price, n))
                            else:
                                room = limit[where] - (load or over[where])
                                dom_rooms.append((dom_price, max(0, room) // dom_param))
                        greedy = cost + others_after + greedy_dominant(v, dom_rooms)
                        if greedy >= cutoff:
                            continue
                        if greedy > promise:
                            promise = greedy
                    excess = need - free_room - fill_block
                    if not main_closed:
                        excess -= fill_main
                        if excess > 0:
                            # something streams: its weights pass through the main device
                            j = bisect.bisect_left(stream_cum, excess)
                            if j == len(stream_cum):
                                continue
                            if stream_works[j] > main_max:
                                room_main -= stream_works[j] - (main_max if main_max > 0 else 0)
                                if room_main < 0:
                                    continue
                                excess = need - free_room - fill_block
                                excess -= (min(room_main, room_main // size * size + others_main)
                                           if size else room_main)  # fmt: skip
                    if excess > 0:
                        streaming = cost + rest_after + streaming_at_least(variant, v, excess)
                        if split_offload:
                            # the streamed weights fill the cpu, the rest is read from disk
                            weights = excess * ratios[variant] + base_streamed
                            cpu_room = (
                                cpu_limit - (cpu_load or cpu_over) if track_cpu and cpu_load >= 0 else inf
                            )
                            if weights > cpu_room:
                                disk_room = inf
                                if track_disk and disk_load >= 0:
                                    disk_room = disk_limit - (disk_load or disk_over)
                                if weights - cpu_room > disk_room:
                                    continue
                                streaming += (weights - cpu_room) * surcharge
                        if streaming >= cutoff:
                            continue
                        if streaming > promise:
                            promise = streaming
                    bucket.append(tuple.__new__(_Label, (
                        cost, main_sum, main_max, cpu_load, disk_load, block_sum, block_max,
                        label, place, promise,
                    )))  # fmt: skip
        layer = {state: _pareto(bucket) for state, bucket in children.items() if bucket}
        if beam and sum(map(len, layer.values())) > beam:
            ranked = heapq.nsmallest(
                beam,
                ((label.promise, k, label) for k, labels in enumerate(layer.values()) for label in labels),
            )
            states = list(layer)
            layer = {}
            for _, k, label in ranked:
                layer.setdefault(states[k], []).append(label)
    best: _Label | None = None
    for state, labels in layer.items():
        if gpu_main and (state.block < 0 if in_order else not state.used >> main & 1):
            continue  # the main device must hold a block
        for label in labels:
            if best is None or label.latency < best.latency:
                best = label
    if best is None:
        return None
    placements = []
    node = best
    while node.parent is not None:
        placements.append(node.place)
        node = node.parent
    placements.reverse()
    return _Found(best.latency, placements)
