"""Price a device map: latency per phase and peak memory per device, following accelerate's
run-time semantics.

Per forward pass (prefill, or one decode step)::

    T = sum_u C(u, exec(u))                                  compute
      + sum_{u on cpu/disk, main on a GPU} S(u)              weights streamed in on every call
      + sum_{edges p->c, exec(p) != exec(c)} alpha + bytes / beta
      + h x (1 + sum_u hooks(u))     when the map has hooks  accelerate's hooks
      + g                            in a decode step        generate's own work per token

where exec(u) is the unit's placement, or the main device (the lowest GPU of the map, else the
cpu) for a unit placed on ``cpu`` or ``disk``. A generate call costs
prefill + (new_tokens - 1) x decode: the prefill forward yields the first token.

Streaming S(u), as the installed accelerate (1.x: ``hooks.AlignDevicesHook``,
``utils.modeling.set_module_tensor_to_device``, ``utils.offload.OffloadedWeightsLoader``) and
transformers' ``accelerate_dispatch`` do it:

- a ``cpu`` unit under a GPU main device: ``dispatch_model`` keeps its weights in a state dict of
  ordinary cpu tensors (pageable memory, not pinned). On every call the pre-forward of each of the
  unit's modules that holds tensors calls ``set_module_tensor_to_device(..., value=tensor)`` per
  tensor: ``value.to(device)`` with ``non_blocking=False``, a synchronous copy from pageable
  memory, then ``clear_device_cache()`` (``torch.cuda.empty_cache``); the post-forward puts them
  back on the meta device. Priced per tensor on the pageable ``cpu -> main`` link
  (`HardwareProfile.host_copy`): ``tensors x alpha + bytes / beta``.
- a ``disk`` unit: transformers hands its offload index to ``dispatch_model``, so the weights
  loader opens each tensor with ``safe_open(file, device=main)``: a parse of the file's whole
  header (`HardwareProfile.safetensors_entry_s` per tensor it lists, `Unit.file_tensors`), a
  read of the file (alpha per tensor) into pageable memory, then the same synchronous
  per-tensor copy to the main device. Priced as the parse and the read plus the pageable copy.
  Under a cpu main device a ``cpu`` unit runs in place and a ``disk`` unit costs the parse and
  the read alone.

A disk read is priced at the page cache's speed when the host's free RAM could cache the whole
model (a ``--max-memory`` cap limits what a map places in RAM, not the kernel's cache), else at
the storage device's. A hardware profile without a pageable figure for ``cpu -> main`` (a spec
written before they existed) is priced on the pinned link, optimistic by the staging copy.

Hooks: ``dispatch_model`` attaches an ``AlignDevicesHook`` to the model and to every module of
every unit that holds a tensor when the map spans devices or uses disk, none to a map on one
device; each hooked call costs h (`HardwareProfile.hook_call_s`, measured from a tiny model's
``generate`` with and without hooks), hooks(u) of them per forward (`Unit.hook_calls`). Every
forward, whatever the map, also pays its own Python once (`HardwareProfile.forward_call_s`), and
every decode step ``generate``'s (`HardwareProfile.generate_step_s`).

Decode at the growing context: step j of the D = new_tokens - 1 decode steps reads the KV cache
of seq + j tokens, while a unit's decode profile is timed at step 1. ``generate``'s default cache
(transformers' ``DynamicCache``) also appends each step's token by ``torch.cat`` per layer, a copy
of the whole cache (read, then written): each token of context costs `KV_PASSES` = 3 passes over
its bytes per step. Summed over the steps (sum_j (j - 1) = D (D - 1) / 2), the mean step adds
(D - 1) / 2 x 3 x (KV bytes per token) / (memory bandwidth of exec(u)) to each unit that keeps a
cache; it is part of C(u, exec(u)) in decode.

Peak memory on a device is its resident weights, the buffers of offloaded units (they stay on the
main device), the KV cache of the units that execute there, the largest working set of one such
unit (its activation peak, what the forward holds when it starts, its inputs among them, and its
weights while streamed in; or the glue code's peak before it), and the runtime's own overhead.
A ``disk`` unit read from a safetensors checkpoint stored in another dtype than the model runs in
holds one more tensor while streamed in: the loader reads each weight whole in its stored dtype
and casts it (``OffloadedWeightsLoader``: ``get_tensor``, then ``.to(dtype)``), so the stored copy
of the largest one (`Unit.disk_cast_bytes`) sits beside the weights already read.
Accelerate's maps and ours are priced by this same code.

A quantized checkpoint (`ModelGraph.quantization`) is priced as its quantizer loads it: units at
their stored bytes (streamed as stored), each device's limit less the quantizer's reserve, and a
map that does not load (bitsandbytes' cpu or disk units) cannot be priced: `predict` raises, as
for a map that needs a missing link.

Pure: no torch, no I/O. `CostModel` precomputes arrays once so `predict` is a tight loop
(tens of microseconds for a 32-layer model).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import replace

from tuner.core.devices import OFFLOAD
from tuner.core.domain import INPUT
from tuner.core.domain import Calibration
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload

__all__ = ["KV_PASSES", "PRICING_VERSION", "CostModel"]

#: Which cost model priced a run; a new one prices the same map otherwise. Stored runs priced by
#: another are not reused (it is part of their key): 2 counts what the forward holds around
#: each unit, the experts generate gathers off the cpu, and the prompt's last logits alone; 3 the
#: stored copy of a weight cast as it is read from disk.
PRICING_VERSION = 3

#: Passes over its KV cache a decode step makes per token of context: attention reads it, and
#: ``DynamicCache.update`` (transformers' ``cache_utils.DynamicLayer``) grows it with
#: ``torch.cat([self.keys, key_states], dim=-2)``, which reads the old tensor and writes a new one.
KV_PASSES = 3


class CostModel:
    """Prices device maps of one model, on one machine, for one workload.

    Args:
        graph: the model's units in execution order, with bytes and data-flow edges.
        profiles: one UnitProfile per unit that runs, per phase of `workload`, for each compute
            device a map may execute on (measured, or estimated for a device from a spec).
        hardware: devices (memory, runtime overhead) and links (alpha, beta).
        workload: batch, prompt, new tokens.
        max_memory: bytes a map may use per device key; a device left out may use its free
            memory (free disk space for ``disk``).
        calibration: factors per phase learned from maps measured on this machine; each phase
            of every prediction is the model's seconds times its factor. None: uncalibrated.

    Raises:
        ValueError: a unit that runs has no profile on a compute device, or a link that a map
            could need is missing from `hardware`.
    """

    def __init__(
        self,
        graph: ModelGraph,
        profiles: Sequence[UnitProfile],
        hardware: HardwareProfile,
        workload: Workload,
        max_memory: Mapping[str, int] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.graph = graph
        self.hardware = hardware
        self.calibration = calibration
        self.workload = workload
        self._given = (tuple(profiles), dict(max_memory) if max_memory is not None else None)
        self.phases = workload.phases
        names = graph.unit_names
        self._index = {name: i for i, name in enumerate(names)}
        # Devices with profiles are the ones a map may execute on: with GPUs present the cpu only
        # stores weights, so a GPU-only profile is complete.
        profiled = {p.device for p in profiles}
        self._compute = [d.key for d in hardware.compute_devices if d.key in profiled]
        units = graph.units
        decode_kv = [0] * len(units)
        for profile in profiles:
            if profile.phase is Phase.DECODE:
                i = self._index[profile.unit]
                decode_kv[i] = max(decode_kv[i], profile.kv_bytes_per_token)
        self._quantization = graph.quantization
        self._param = [u.param_bytes for u in units]
        self._tensors = [u.param_tensors for u in units]
        # what opening the file costs on each read of a disk unit's weight
        self._open = [u.file_tensors * hardware.safetensors_entry_s for u in units]
        self._loaded = [u.loaded_bytes for u in units]
        self._buffer = [u.buffer_bytes for u in units]
        self._calls = {
            Phase.PREFILL: [u.calls for u in units],
            Phase.DECODE: [u.decode_calls for u in units],
        }
        by_key = {(p.unit, p.device, p.phase): p for p in profiles}
        # The mean decode step reads this many tokens of KV cache more than the profiled step 1.
        growth = (workload.decode_steps - 1) / 2 if workload.decode_steps > 1 else 0.0
        self._time: dict[str, dict[Phase, list[float]]] = {}
        for device in self._compute:
            self._time[device] = {}
            bandwidth = hardware.device(device).memory_bandwidth
            for phase in self.phases:
                row = []
                for i, unit in enumerate(units):
                    if self._calls[phase][i] == 0:
                        row.append(0.0)
                        continue
                    measured = by_key.get((unit.name, device, phase))
                    if measured is None:
                        raise ValueError(f"no {phase.value} profile of {unit.name} on device {device}")
                    seconds = measured.time_s
                    if phase is Phase.DECODE and bandwidth > 0:
                        seconds += growth * KV_PASSES * decode_kv[i] / bandwidth
                    row.append(seconds)
                self._time[device][phase] = row
        self._decoding = Phase.DECODE in self.phases
        idle = (0.0,) * len(units)
        self._rows = {
            device: (tuple(times[Phase.PREFILL]), tuple(times.get(Phase.DECODE, idle)))
            for device, times in self._time.items()
        }
        self._streamed = self._streamed_bytes(units, profiles)
        self._cache = [0] * len(units)
        self._activation = [0] * len(units)
        for profile in profiles:
            i = self._index[profile.unit]
            self._activation[i] = max(self._activation[i], profile.activation_peak_bytes)
            if profile.phase is Phase.PREFILL:
                self._cache[i] = max(self._cache[i], profile.cache_bytes)
        self._cache = [c + kv * workload.decode_steps for c, kv in zip(self._cache, decode_kv, strict=True)]
        self._edges = [
            (-1 if e.producer == INPUT else self._index[e.producer], self._index[e.consumer], e.prefill_bytes,
             e.decode_bytes)
            for e in graph.edges
        ]  # fmt: skip
        # generate decodes a mixture of experts on batched_mm when model.device is not the cpu,
        # gathering every chosen expert's weights (a tiny Mixtral's layer: 3 MB against 18 KB)
        decodes = workload.decode_steps > 0
        self._experts_decode = [(u.experts_decode_peak_bytes or 0) if decodes else 0 for u in units]
        self._device_unit = self._index.get(graph.device_unit)
        self._experts_activation = [
            max(a, e) for a, e in zip(self._activation, self._experts_decode, strict=True)
        ]
        self._inputs = [0] * len(units)
        for _, consumer, prefill_bytes, decode_bytes in self._edges:
            self._inputs[consumer] += max(prefill_bytes, decode_bytes)
        # Beside its inputs a unit finds held what earlier units made and the model keeps: a
        # tiny wav2vec2 keeps its feature encoder's output, and peaks at 2.2x the largest
        # unit's activations and inputs.
        self._inputs = [
            max(inputs, unit.held_bytes or 0) for inputs, unit in zip(self._inputs, units, strict=True)
        ]
        # the glue code's peak before a unit: before its weights stream in, beside no activation
        self._glue = [unit.glue_bytes or 0 for unit in units]
        self._cast = [unit.disk_cast_bytes or 0 for unit in units]
        # What each unit holds streamed in, its weights included, by whether its experts decode on
        # the cpu's own path and where its weights stream from: looked up, not recomputed, by
        # `predict`'s loop.
        self._streamed_sets = {
            (on_cpu_path, placement): self._streamed_needs(
                self._activation if on_cpu_path else self._experts_activation, placement
            )
            for on_cpu_path in (False, True)
            for placement in OFFLOAD
        }
        self._links = {(link.src, link.dst): link for link in hardware.links}
        # What a map with hooks pays them per forward: the model's own hook, then every hooked
        # module call of the units that run.
        self._hook_s = {
            phase: hardware.hook_call_s * (1 + sum(unit.hook_calls(phase) for unit in units))
            for phase in Phase
        }
        self._step_s = hardware.generate_step_s
        self._forward_s = hardware.forward_call_s
        self._disk_read = self._disk_read_link(graph, hardware)
        self._names = names
        # Per device pair the (alpha, 1/beta) of the route between them: predict then prices an
        # edge with one lookup and one multiply-add per phase.
        keys = [d.key for d in hardware.devices]
        self._routes = {
            (src, dst): route
            for src in keys
            for dst in keys
            if src != dst and (route := self._route(src, dst)) is not None
        }
        self._keys = keys
        self._slot = {key: k for k, key in enumerate(keys)}
        self._route_table = [[self._routes.get((src, dst)) for dst in keys] for src in keys]
        # (alpha, 1/beta) of the copy accelerate makes of an offloaded tensor into each device:
        # from pageable memory, or over the pinned link where the hardware has no pageable figure.
        self._copy_in = {
            key: copy for key in keys if key != "cpu" and (copy := self._host_copy(key)) is not None
        }
        self._streaming_rows: dict[tuple[str, str], tuple[tuple[float, ...], tuple[float, ...]] | None] = {}
        share = self._quantization.memory_share if self._quantization is not None else 1.0
        self._share = {d.key: share if d.kind != "disk" else 1.0 for d in hardware.devices}
        self._limits = {
            d.key: _reserved((max_memory or {}).get(d.key, d.free_memory), self._share[d.key])
            for d in hardware.devices
        }
        self._overhead = {d.key: d.runtime_overhead for d in hardware.devices}
        for key in max_memory or {}:
            if key not in self._limits:
                raise ValueError(f"max_memory names device {key!r}, which the hardware does not have")

    # -- read-only views for solvers (tuner.plan.exact) -------------------------------------------

    @property
    def compute_devices(self) -> tuple[str, ...]:
        """The devices a map may execute on: compute devices of the hardware that have profiles."""
        return tuple(self._compute)

    def compute_seconds(self, device: str, phase: Phase) -> tuple[float, ...]:
        """Per unit, in graph order: seconds of one `phase` forward on `device` (0 for a unit that
        does not run in that phase), as `predict` adds them."""
        return tuple(self._time[device][phase])

    def calls(self, phase: Phase) -> tuple[int, ...]:
        """Per unit: how many times it runs in one forward of `phase`."""
        return tuple(self._calls[phase])

    @property
    def cache_bytes(self) -> tuple[int, ...]:
        """Per unit: KV-cache bytes held on its execution device for the whole workload."""
        return tuple(self._cache)

    def refusal(self, placements: Sequence[str]) -> str:
        """Why a map with these placements does not load (the quantizer's rule), in one line;
        empty when it does."""
        return self._quantization.refusal(placements) if self._quantization is not None else ""

    @property
    def working_set_bytes(self) -> tuple[int, ...]:
        """Per unit: activation peak plus what the forward holds when it starts, its inputs
        included (its weights come on top when it is streamed in), or the glue code's peak before
        it where that is more. A unit holding experts counts its decode step on the path that
        gathers their weights, whatever the map: `predict` counts it only where generate takes
        that path (`_decodes_off_cpu`); `working_set_bytes_decoding_on_cpu` are the others."""
        return self._working_sets(self._experts_activation)

    @property
    def working_set_bytes_decoding_on_cpu(self) -> tuple[int, ...] | None:
        """`working_set_bytes` as `predict` counts them where generate decodes experts on the
        cpu's own path (maps run on the cpu whose `ModelGraph.device_unit` stays on the cpu);
        None when that path holds no less (no experts, or no decode)."""
        if self._device_unit is None or self._experts_activation == self._activation:
            return None
        return self._working_sets(self._activation)

    def _working_sets(self, activation: list[int]) -> tuple[int, ...]:
        """Per unit, its activation peak plus its inputs, or the glue code's peak before it."""
        return tuple(max(a + i, g) for a, i, g in zip(activation, self._inputs, self._glue, strict=True))

    def streamed_working_set_bytes(self, placement: str, *, decoding_on_cpu: bool = False) -> tuple[int, ...]:
        """Per unit: the most its call holds on the main device when its weights stream in from
        `placement` (``cpu`` or ``disk``), those weights included, as `predict` counts it. With
        `decoding_on_cpu`, a unit holding experts decodes on the cpu's own path (see
        `working_set_bytes_decoding_on_cpu`)."""
        return self._streamed_sets[decoding_on_cpu, placement]

    def _streamed_needs(self, activation: list[int], placement: str) -> tuple[int, ...]:
        """Per unit, what it holds at most while streamed in from `placement`: its activation
        peak, inputs and weights; the glue code's peak before it, before its weights come in; and
        for weights read from disk in another dtype than the model's, the inputs, the weights and
        the stored copy of the tensor being cast (`Unit.disk_cast_bytes`)."""
        cast = self._cast if placement == "disk" else [0] * len(activation)
        return tuple(
            max(a + i + p, g, i + p + c if c else 0)
            for a, i, p, g, c in zip(activation, self._inputs, self._param, self._glue, cast, strict=True)
        )

    def limit(self, device: str) -> int:
        """Bytes a map may use on `device` (0 for a device the hardware does not have), less a
        quantizer's reserve."""
        return self._limits.get(device, 0)

    def memory_share(self, device: str) -> float:
        """The share of `device`'s limit a map may fill: 1.0 but where a quantizer keeps a reserve
        (bitsandbytes' 0.9), never on disk."""
        return self._share.get(device, 1.0)

    def overhead(self, device: str) -> int:
        """Bytes the runtime takes on `device` before any tensor."""
        return self._overhead.get(device, 0)

    def link(self, src: str, dst: str) -> Link | None:
        """The direct link from `src` to `dst`, if the hardware has one."""
        return self._links.get((src, dst))

    def interchangeable(self, x: str, y: str) -> bool:
        """Whether swapping devices `x` and `y` in any map leaves its price unchanged: the same
        limit, overhead and compute times, and every link the same with the two swapped."""
        if self.limit(x) != self.limit(y) or self.overhead(x) != self.overhead(y):
            return False
        if self._copy_in.get(x) != self._copy_in.get(y):
            return False
        if any(self._time[x][phase] != self._time[y][phase] for phase in self.phases):
            return False

        def speed(src: str, dst: str) -> tuple[float, float] | None:
            found = self._links.get((src, dst))
            return None if found is None else (found.alpha_s, found.beta_bytes_per_s)

        swap = {x: y, y: x}
        keys = [d.key for d in self.hardware.devices]
        return all(speed(swap.get(s, s), swap.get(d, d)) == speed(s, d) for s in keys for d in keys if s != d)

    def interchangeable_classes(self, devices: Sequence[str]) -> list[list[str]]:
        """`devices` (compute devices) split into classes whose members are pairwise
        `interchangeable` (an equivalence: swaps compose), each class in the given order, the
        classes in the order of their first member.

        Partition refinement in O(K^2) lookups for K devices of the hardware, where testing each
        pair costs O(K^2) apiece: devices alike in limit, overhead and compute times are split by
        their links to every device outside their group until no group splits; a group whose
        links among its own members are all alike is then one class (a 1000-GPU spec with one
        shorthand for every GPU pair: one pass), any other is sorted pair by pair.
        """
        order = {key: k for k, key in enumerate(devices)}
        keys = [d.key for d in self.hardware.devices]

        def speed(src: str, dst: str) -> tuple[float, float] | None:
            found = self._links.get((src, dst))
            return None if found is None else (found.alpha_s, found.beta_bytes_per_s)

        alike: dict[tuple[object, ...], list[str]] = {}
        for x in devices:
            times = tuple(tuple(self._time[x][phase]) for phase in self.phases)
            alike.setdefault((self.limit(x), self.overhead(x), times, self._copy_in.get(x)), []).append(x)
        pending = list(alike.values())
        classes: list[list[str]] = []
        while pending:
            group = pending.pop()
            if len(group) == 1:
                classes.append(group)
                continue
            inside = set(group)
            outside = [d for d in keys if d not in inside]
            split: dict[tuple[object, ...], list[str]] = {}
            for x in group:
                split.setdefault(tuple((speed(x, d), speed(d, x)) for d in outside), []).append(x)
            if len(split) > 1:
                pending += split.values()
            elif len({speed(x, y) for x in group for y in group if x != y}) == 1:
                classes.append(group)
            else:  # links among the group's members differ (GPUs bridged in pairs, say)
                found: list[list[str]] = []
                for x in group:
                    home = next((c for c in found if self.interchangeable(c[0], x)), None)
                    if home is None:
                        found.append([x])
                    else:
                        home.append(x)
                classes += found
        for members in classes:
            members.sort(key=order.__getitem__)
        return sorted(classes, key=lambda members: order[members[0]])

    # -- transfers ------------------------------------------------------------------------

    def transfer_seconds(self, src: str, dst: str, nbytes: int) -> float:
        """Time to move `nbytes` from `src` to `dst`; GPU to GPU goes through the host when the
        hardware has no direct link (no peer access)."""
        if src == dst or nbytes == 0:
            return 0.0
        route = self._routes.get((src, dst))
        if route is None:
            raise ValueError(f"the hardware has no link {src} -> {dst}")
        return route[0] + nbytes * route[1]

    def _route(self, src: str, dst: str) -> tuple[float, float] | None:
        """(alpha, 1/beta) of the direct link, or of the two hops through the host."""
        link = self._links.get((src, dst))
        if link is not None:
            return link.alpha_s, 1.0 / link.beta_bytes_per_s
        up, down = self._links.get((src, "cpu")), self._links.get(("cpu", dst))
        if "cpu" in (src, dst) or up is None or down is None:
            return None
        return up.alpha_s + down.alpha_s, 1.0 / up.beta_bytes_per_s + 1.0 / down.beta_bytes_per_s

    def _host_copy(self, device: str) -> tuple[float, float] | None:
        """(alpha, 1/beta) of accelerate's copy of a tensor from the cpu into `device`."""
        try:
            link, _ = self.hardware.host_copy("cpu", device)
        except KeyError:
            return None
        return link.alpha_s, 1.0 / link.beta_bytes_per_s

    @staticmethod
    def _disk_read_link(graph: ModelGraph, hardware: HardwareProfile) -> Link | None:
        """The page cache when the host's free RAM can hold the whole model (whatever a map puts
        on disk then stays cached after its first read), else the storage device."""
        cold = next((link for link in hardware.links if (link.src, link.dst) == ("disk", "cpu")), None)
        cpu = next((d for d in hardware.devices if d.kind == "cpu"), None)
        if hardware.page_cache is not None and cpu is not None and graph.total_bytes <= cpu.free_memory:
            return hardware.page_cache
        return cold

    def _streamed_bytes(
        self, units: Sequence[Unit], profiles: Sequence[UnitProfile]
    ) -> dict[Phase, list[int]]:
        """Bytes an offloaded unit's call on the cpu reads from the mapped checkpoint, per phase:
        every weight it loads, tied ones included; for an embedding table only the rows it looks
        up, which are as many bytes as its output."""
        output = {phase: [0] * len(units) for phase in Phase}
        for profile in profiles:
            row = output[profile.phase]
            i = self._index[profile.unit]
            row[i] = max(row[i], profile.output_bytes)
        return {
            phase: [
                min(unit.loaded_bytes, output[phase][i]) if unit.lookup else unit.loaded_bytes
                for i, unit in enumerate(units)
            ]
            for phase in Phase
        }

    def stream_seconds(self, unit: int, placement: str, main: str, phase: Phase = Phase.PREFILL) -> float:
        """Loading an offloaded unit's parameters for one call in `phase`, as accelerate's hooks
        do: each parameter tensor is read (from disk for a ``disk`` unit) and copied to the main
        device from pageable memory, synchronously, one tensor at a time (see the module's
        docstring)."""
        if placement not in OFFLOAD or self._tensors[unit] == 0 or self._loaded[unit] == 0:
            return 0.0
        tensors = self._tensors[unit]
        # copying to a GPU reads the whole tensor; computing on the cpu from the map reads only
        # the pages it touches, which for an embedding table are the rows it looks up
        nbytes = self._streamed[phase][unit] if main == "cpu" else self._loaded[unit]
        seconds = 0.0
        if placement == "disk":
            if self._disk_read is None:
                raise ValueError("the hardware has no link disk -> cpu")
            seconds += tensors * (self._open[unit] + self._disk_read.alpha_s)
            seconds += nbytes / self._disk_read.beta_bytes_per_s
        if main != "cpu":
            copy = self._copy_in.get(main)
            if copy is None:
                raise ValueError(f"the hardware has no link cpu -> {main}")
            seconds += tensors * copy[0] + nbytes * copy[1]
        return seconds

    def hooks_seconds(self, placements: Sequence[str], phase: Phase) -> float:
        """What accelerate's hooks cost in one forward of `phase` under a map with these
        placements: nothing for a map on one device (``dispatch_model`` attaches none), else a
        fixed time per hooked module call."""
        if phase not in self.phases or (len(set(placements)) < 2 and "disk" not in placements):
            return 0.0
        return self._hook_s[phase]

    # -- pricing --------------------------------------------------------------------------

    def with_units_in(self, names: Sequence[str]) -> CostModel:
        """This cost model with the graph's units listed in the order of `names`. No price depends
        on the order (a map is priced by where each unit is, its edges wherever they lead); the
        exact solver's class, built along it, does."""
        if sorted(names) != sorted(self.graph.unit_names):
            raise ValueError("the order must name each unit of the model once")
        by_name = {unit.name: unit for unit in self.graph.units}
        graph = replace(self.graph, units=tuple(by_name[name] for name in names))
        profiles, max_memory = self._given
        return CostModel(graph, profiles, self.hardware, self.workload, max_memory, self.calibration)

    def placements(self, dmap: DeviceMap) -> list[str]:
        """The map's placements in the graph's unit order; a map must place every unit exactly."""
        mapping = dict(dmap.placements)
        if len(mapping) != len(self._names) or any(name not in mapping for name in self._names):
            missing = [name for name in self._names if name not in mapping]
            extra = [name for name in mapping if name not in self._index]
            raise ValueError(
                f"device map does not match the model: missing {missing[:3]}, unknown {extra[:3]}"
            )
        return [mapping[name] for name in self._names]

    def predict(self, dmap: DeviceMap) -> Prediction:
        """Latency of each phase and peak memory of each device under `dmap`.

        Raises:
            ValueError: the map does not match the model, executes where no unit has a profile,
                needs a link the hardware lacks, or does not load (the model's quantizer refuses it).
        """
        placement = self.placements(dmap)
        if self._quantization is not None:
            refused = self._quantization.refusal(placement)
            if refused:
                raise ValueError(refused)
        main = dmap.main_device
        execution = [main if place in OFFLOAD else place for place in placement]
        for device in set(execution):
            if device not in self._time:
                raise ValueError(f"no unit profiles on device {device}, where this map executes")
        prefill, decode = self._phase_costs(placement, execution, main)
        calibration = self.calibration
        if calibration is not None:
            prefill, decode = prefill.scaled(calibration.prefill), decode.scaled(calibration.decode)
        return Prediction(
            prefill=prefill,
            decode=decode,
            new_tokens=self.workload.new_tokens,
            memory=self._memory(placement, execution, main),
            calibration=calibration,
        )

    def memory(self, dmap: DeviceMap) -> tuple[DeviceMemory, ...]:
        """Peak memory of each device under `dmap`, as `predict` gives it, without pricing time:
        it needs no link and no profile on the devices the map executes on.

        Raises:
            ValueError: the map does not match the model.
        """
        placement = self.placements(dmap)
        main = dmap.main_device
        return self._memory(placement, [main if place in OFFLOAD else place for place in placement], main)

    def _phase_costs(
        self, placement: list[str], execution: list[str], main: str
    ) -> tuple[PhaseCost, PhaseCost]:
        """Both phases in one pass over units and edges: this loop is the search's hot path, so
        it reads plain tuples, lists and locals rather than the phase-keyed tables."""
        rows = self._rows
        streaming = self._streaming_rows
        compute_prefill = compute_decode = stream_prefill = stream_decode = 0.0
        for i, device in enumerate(execution):
            prefill_row, decode_row = rows[device]
            compute_prefill += prefill_row[i]
            compute_decode += decode_row[i]
            place = placement[i]
            if place == "cpu" or place == "disk":
                key = (place, main)
                if key not in streaming:
                    streaming[key] = self._stream_rows(place, main)
                both = streaming[key]
                if both is None:
                    # A link streaming needs is missing: raises, naming it, for a unit with
                    # weights; a unit without any streams nothing.
                    self.stream_seconds(i, place, main)
                    continue
                stream_prefill += both[0][i]
                stream_decode += both[1][i]
        transfer_prefill = transfer_decode = 0.0
        slot = self._slot
        routes = self._route_table
        index = [slot[device] for device in execution]
        source = slot[main]
        for producer, consumer, prefill_bytes, decode_bytes in self._edges:
            src = source if producer < 0 else index[producer]
            dst = index[consumer]
            if src != dst:
                route = routes[src][dst]
                if route is None:
                    raise ValueError(f"the hardware has no link {self._keys[src]} -> {self._keys[dst]}")
                if prefill_bytes:
                    transfer_prefill += route[0] + prefill_bytes * route[1]
                if decode_bytes:
                    transfer_decode += route[0] + decode_bytes * route[1]
        prefill = PhaseCost(
            compute_prefill,
            stream_prefill,
            transfer_prefill,
            self.hooks_seconds(placement, Phase.PREFILL) + self._forward_s,
        )
        if not self._decoding:
            return prefill, PhaseCost(0.0, 0.0, 0.0)
        overhead = self.hooks_seconds(placement, Phase.DECODE) + self._step_s + self._forward_s
        return prefill, PhaseCost(compute_decode, stream_decode, transfer_decode, overhead)

    def _stream_rows(self, placement: str, main: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per unit, the seconds its weights stream in one forward of each phase (calls counted)
        when it is placed on `placement` under main device `main`; None when the hardware lacks
        a link that streaming needs."""
        rows = []
        for phase in (Phase.PREFILL, Phase.DECODE):
            calls = self._calls[phase]
            active = phase in self.phases
            try:
                rows.append(
                    tuple(
                        calls[i] * self.stream_seconds(i, placement, main, phase)
                        if active and calls[i]
                        else 0.0
                        for i in range(len(calls))
                    )
                )
            except ValueError:
                return None
        return rows[0], rows[1]

    def _decodes_off_cpu(self, placement: list[str], main: str) -> bool:
        """Whether ``model.device`` is not the cpu under this map, so that generate decodes a
        mixture of experts on batched_mm: the unit holding the first parameter is on a GPU, or
        offloaded (its parameters on ``meta``)."""
        device = self._device_unit
        return device is None or not (placement[device] == "cpu" and main == "cpu")

    def _memory(self, placement: list[str], execution: list[str], main: str) -> tuple[DeviceMemory, ...]:
        devices = dict.fromkeys([main, *placement])
        weights = dict.fromkeys(devices, 0)
        buffers = dict.fromkeys(devices, 0)
        kv = dict.fromkeys(devices, 0)
        working = dict.fromkeys(devices, 0)
        off_cpu = self._decodes_off_cpu(placement, main)
        activation = self._experts_activation if off_cpu else self._activation
        streamed = self._streamed_sets
        for i, place in enumerate(placement):
            offloaded = place in OFFLOAD and place != main
            if offloaded:
                weights[place] += self._param[i]
                buffers[main] += self._buffer[i]
            else:
                weights[place] += self._param[i] + self._buffer[i]
            device = execution[i]
            kv[device] += self._cache[i]
            if offloaded:
                need = streamed[not off_cpu, place][i]
            else:
                need = max(activation[i] + self._inputs[i], self._glue[i])
            if need > working[device]:
                working[device] = need
        return tuple(
            DeviceMemory(
                device=device,
                weights=weights[device],
                offloaded_buffers=buffers[device],
                kv_cache=kv[device],
                working_set=working[device],
                overhead=self._overhead.get(device, 0),
                limit=self._limits.get(device, 0),
            )
            for device in devices
        )


def _reserved(limit: int, share: float) -> int:
    """What a map may fill of `limit` when a quantizer keeps ``1 - share`` of it in reserve."""
    return limit if share >= 1.0 else int(limit * share)
