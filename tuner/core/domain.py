"""The value objects that flow between the profiler, the storage and the tuner.

Every class here is a small frozen dataclass that checks its own invariants. Nothing in this
module imports torch or anything of ours outside `tuner.core`, so the storage and the command line can use it
without loading a deep-learning stack.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import statistics
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from tuner.core.devices import OFFLOAD
from tuner.core.devices import is_placement
from tuner.core.devices import main_device
from tuner.core.devices import to_hf
from tuner.core.devices import to_key
from tuner.core.exceptions import ConstraintError

__all__ = [
    "AUTO_DTYPE",
    "DTYPE_BYTES",
    "DTYPE_CHOICES",
    "OFFLOAD_RULES",
    "STRATEGIES",
    "FITTED_AUTO",
    "THIS_MACHINE",
    "INPUT",
    "INPUT_KINDS",
    "MAX_QUEUED_TIMEOUT_S",
    "MAX_RANDOM_SEED",
    "MAX_STORED_INT",
    "Calibration",
    "Candidate",
    "Device",
    "DeviceMap",
    "DeviceMemory",
    "Edge",
    "HardwareProfile",
    "Link",
    "ModelGraph",
    "ModelProfile",
    "Phase",
    "PhaseCost",
    "Prediction",
    "Quantization",
    "Run",
    "RunStatus",
    "Unit",
    "UnitProfile",
    "Workload",
    "decode_steps",
    "stable_hash",
]

#: The dtypes a workload runs in, with their size in bytes.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}

#: The dtype a request asks for to get the one ``from_pretrained`` loads without a ``dtype``: the
#: checkpoint's own (its config's ``dtype``, else its weights'). Resolved once, where the model is
#: built; a `Workload` always holds the resolved dtype.
AUTO_DTYPE = "auto"

#: What a request may ask for: ``auto`` (the default) or one of `DTYPE_BYTES`.
DTYPE_CHOICES: tuple[str, ...] = (AUTO_DTYPE, *DTYPE_BYTES)

#: Where a quantized checkpoint's units may be offloaded (`Quantization.offload`): anywhere, only
#: as the whole model on cpu, or never.
OFFLOAD_RULES = ("allowed", "whole-cpu", "never")

#: accelerate's strategies, as ``from_pretrained(device_map=...)`` names them and as the
#: candidates that price them are named.
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: How the candidate of accelerate's ``auto`` planned under limits lowered until its map fits
#: (when ``auto`` as asked does not) is named: ``auto at cpu=12.4MiB``, the limits it was planned for.
FITTED_AUTO = "auto at "

#: The producer name of tensors that no unit made: the model's inputs and the glue code between
#: units (attention masks, position ids). At run time they live on the main device.
INPUT = ""


def stable_hash(payload: object) -> str:
    """A short hex digest of a JSON-serialisable payload, independent of dict order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Phase(str, enum.Enum):
    """A forward pass of a generate call: the prompt at once, or one new token."""

    PREFILL = "prefill"
    DECODE = "decode"


#: What a model takes as a prompt, by its main input: token ids, pixel values, or speech features.
INPUT_KINDS = ("text", "vision", "speech")

#: What `Run.hardware_name` says of a plan for the machine the tuner runs on (else a spec's name).
THIS_MACHINE = "this machine"

#: The largest whole number a run keeps (ids, batch, seq, trials, ...): PostgreSQL's integer,
#: the narrower of the databases' (SQLite's reaches 2**63 - 1).
MAX_STORED_INT = 2**31 - 1
#: The largest seed the search's sampler takes (numpy's).
MAX_RANDOM_SEED = 2**32 - 1
#: The longest time limit a queued run's search may have: 30 days (its deadline is stored as a
#: time, which a limit of centuries would overflow).
MAX_QUEUED_TIMEOUT_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Workload:
    """What the model is asked to do: `batch` prompts of `seq` tokens, `new_tokens` generated.

    A forward-only workload has `new_tokens == 0`; its latency is one prefill.
    """

    batch: int = 1
    seq: int = 128
    new_tokens: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 (got {self.batch})")
        if self.seq < 1:
            raise ValueError(f"seq must be at least 1 (got {self.seq})")
        if self.new_tokens < 0:
            raise ValueError(f"new tokens must be 0 or more (got {self.new_tokens})")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")

    def prompt(self, inputs: str = "text") -> str:
        """What each prompt is, for people: ``seq 128`` for a model of `inputs` ``text``; an image
        or a clip for a vision or speech model, which takes no tokens (`INPUT_KINDS`)."""
        kinds = {"text": f"seq {self.seq}", "vision": "one image each", "speech": "one audio clip each"}
        return kinds[inputs]

    def describe(self, inputs: str = "text") -> str:
        """For people: ``batch 1, seq 128, 32 new tokens, float32`` (`prompt` for `inputs`)."""
        return f"batch {self.batch}, {self.prompt(inputs)}, {self.new_tokens} new tokens, {self.dtype}"

    def shape(self, inputs: str = "text") -> str:
        """For a table: ``1x128+32 float32`` (batch x seq + new tokens); ``1ximage+0 float32`` and
        ``1xaudio+32 float32`` for a vision and a speech model."""
        prompt = {"text": str(self.seq), "vision": "image", "speech": "audio"}[inputs]
        return f"{self.batch}x{prompt}+{self.new_tokens} {self.dtype}"

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase.PREFILL, Phase.DECODE) if self.new_tokens > 0 else (Phase.PREFILL,)

    @property
    def decode_steps(self) -> int:
        """Decode forwards of one ``generate`` call: the prefill forward yields the first token."""
        return decode_steps(self.new_tokens)


def decode_steps(new_tokens: int) -> int:
    """Decode forwards that generating `new_tokens` tokens takes after the prefill."""
    return max(new_tokens - 1, 0)


@dataclass(frozen=True)
class Unit:
    """The smallest thing a device map places, named as `from_pretrained(device_map=...)` takes it.

    Args:
        name: module (or bare parameter) name, e.g. ``model.layers.7``.
        module_class: class name of the module; empty for a bare parameter or buffer.
        param_bytes: bytes of the parameters this unit owns at the profiled dtype. A tied
            parameter is counted once, in the first unit that owns it (as accelerate does).
        param_tensors: how many parameter tensors accelerate's hooks load, one at a time, on each
            call of the unit when it is offloaded (tied ones included); each load has a fixed cost.
        load_bytes: bytes of those tensors: `param_bytes` plus the tied parameters the unit uses
            but another unit owns. None: equal to `param_bytes`.
        lookup: an embedding table: a call reads only the rows of its tokens, so streaming it
            touches only those rows of the mapped checkpoint.
        buffer_bytes: bytes of the buffers this unit owns.
        executed: whether the unit ran in the traced forward pass.
        calls: how many times it ran in one prefill forward.
        decode_calls: how many times it ran in one decode step (0 for an encoder's units).
        signature: digest of structure, parameter shapes and dtypes; units with equal
            signatures are interchangeable for measurement.
        state_bytes: generation state (KV cache) that the model's code outside every unit
            builds from this unit's outputs in the prefill, held on its device: the keys or values
            of an attention split into leaf units, whose cache update runs in no unit's call.
        state_bytes_per_token: how much that state grows in one decode step.
        hooks: calls of modules that accelerate hooks in one prefill forward, when a map has
            hooks (it spans devices or uses disk): the unit and every module inside it holding a
            tensor get an ``AlignDevicesHook``, whose pre- and post-forward cost a fixed time per
            call. None for a graph traced before they were counted: one per call of the unit.
        decode_hooks: the same in one decode step.
        file_tensors: tensors listed in the safetensors file a ``disk`` placement reads this
            unit's weights from: accelerate opens that file for every weight it reads, parsing
            its whole header. 0 when unknown (a folder without safetensors weights).
        held_bytes: what the forward holds when the unit starts, the most over its calls and
            phases (`profiler.memory.HeldBytes`): its inputs, earlier units' outputs still
            referenced, the glue code's tensors; the KV cache aside. None for a graph traced
            before they were counted: its inputs alone are known.
        glue_bytes: the most the forward holds at once between the previous unit's return and
            this unit's start: the glue code's temporaries (an attention split into leaf units
            computes its scores there). None when not traced.
        disk_cast_bytes: for a ``disk`` placement, the stored bytes of the largest of its tensors
            that accelerate's loader reads from the checkpoint in another dtype than the model's
            and casts (``get_tensor``, then ``.to(dtype)``): both copies are held for a moment.
            0 when every tensor is read in the model's dtype, or re-saved in it (a ``.bin``
            checkpoint's offload folder). None for a graph traced before it was counted.
        experts_decode_peak_bytes: for a unit holding mixture-of-experts layers, its activation
            peak in one decode step on transformers' ``batched_mm`` experts path, which gathers
            the weights of every (token, chosen expert) pair. ``generate`` decodes on that path
            whenever ``model.device`` is not the cpu (a GPU, or ``meta`` when the unit holding
            the first parameter is offloaded); its profiles measure the default path. None for
            a unit without experts.
    """

    name: str
    module_class: str
    param_bytes: int
    buffer_bytes: int
    executed: bool = True
    calls: int = 1
    decode_calls: int = 0
    signature: str = ""
    param_tensors: int = 1
    load_bytes: int | None = None
    lookup: bool = False
    state_bytes: int = 0
    state_bytes_per_token: int = 0
    hooks: int | None = None
    decode_hooks: int | None = None
    file_tensors: int = 0
    held_bytes: int | None = None
    glue_bytes: int | None = None
    experts_decode_peak_bytes: int | None = None
    disk_cast_bytes: int | None = None

    def __post_init__(self) -> None:
        if (
            self.param_bytes < 0
            or self.buffer_bytes < 0
            or (self.disk_cast_bytes or 0) < 0
            or min(self.held_bytes or 0, self.glue_bytes or 0, self.experts_decode_peak_bytes or 0) < 0
            or self.state_bytes < 0
            or self.state_bytes_per_token < 0
            or (self.load_bytes is not None and self.load_bytes < 0)
        ):
            raise ValueError(f"unit {self.name!r} has a negative byte count")
        if self.param_tensors < 0 or self.file_tensors < 0:
            raise ValueError(f"unit {self.name!r} has a negative tensor count")
        if self.calls < 0 or self.decode_calls < 0 or min(self.hooks or 0, self.decode_hooks or 0) < 0:
            raise ValueError(f"unit {self.name!r} has a negative call count")

    @property
    def bytes(self) -> int:
        return self.param_bytes + self.buffer_bytes

    @property
    def loaded_bytes(self) -> int:
        """Parameter bytes an offload hook loads per call (tied parameters included)."""
        return self.param_bytes if self.load_bytes is None else self.load_bytes

    def hook_calls(self, phase: Phase) -> int:
        """Hooked module calls in one forward of `phase` (`hooks`; one per call when not counted)."""
        if phase is Phase.PREFILL:
            return self.calls if self.hooks is None else self.hooks
        return self.decode_calls if self.decode_hooks is None else self.decode_hooks


@dataclass(frozen=True)
class Edge:
    """Tensors that flow from `producer` to `consumer` in one forward pass of each phase.

    `producer` is a unit name or `INPUT`. Bytes are those of the tensors handed to the consumer
    that the producer made last; when the two execute on different devices, that is what moves.
    """

    producer: str
    consumer: str
    prefill_bytes: int
    decode_bytes: int = 0

    def __post_init__(self) -> None:
        if self.prefill_bytes < 0 or self.decode_bytes < 0:
            raise ValueError(f"edge {self.producer!r} -> {self.consumer!r} has negative bytes")


@dataclass(frozen=True)
class Quantization:
    """A checkpoint stored quantized (``quantization_config`` in its config.json), as transformers'
    own quantizer loads it.

    Unit bytes come from that quantizer (its element size per parameter); this object carries
    what else it decides: where units may be placed and how much of each device a map may fill.

    Args:
        method: the quantizer, as transformers names it (``bitsandbytes_4bit``, ``fp8``, ...).
        offload: where units may sit on ``cpu`` or ``disk``: ``allowed`` (anywhere, at their stored
            bytes), ``whole-cpu`` (only the whole model on cpu: ``from_pretrained`` refuses a
            bitsandbytes map with other cpu or disk entries), or ``never`` (bitsandbytes with
            ``llm_int8_enable_fp32_cpu_offload``: such units are built unquantized, and the
            checkpoint's quantized tensors then do not load, or do not run, in them).
        memory_share: the share of each device's limit a map may fill, after the reserve of the
            quantizer's ``adjust_max_memory`` (0.9 for bitsandbytes); disk is not reduced.

    Example:
        >>> bnb = Quantization("bitsandbytes_4bit", offload="whole-cpu", memory_share=0.9)
        >>> bnb.refusal(["0", "0", "cpu"])[:41]
        'bitsandbytes_4bit refuses cpu or disk uni'
        >>> bnb.refusal(["cpu", "cpu"]), sorted(bnb.refused_placements(accelerators=True))
        ('', ['cpu', 'disk'])
    """

    method: str
    offload: str = "allowed"
    memory_share: float = 1.0

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("a quantization names its method")
        if self.offload not in OFFLOAD_RULES:
            raise ValueError(
                f"quantization offload must be one of {', '.join(OFFLOAD_RULES)} (got {self.offload!r})"
            )
        if not 0 < self.memory_share <= 1:
            raise ValueError(f"quantization memory share must be in (0, 1] (got {self.memory_share})")

    def refusal(self, placements: Iterable[str]) -> str:
        """Why a map with these placements does not load, in one line; empty when it does."""
        places = set(placements)
        if not places & set(OFFLOAD) or self.offload == "allowed":
            return ""
        if self.offload == "whole-cpu" and places != {"cpu"}:
            return (
                f"{self.method} refuses cpu or disk units beside others (only the whole model on cpu "
                "loads); a pre-quantized checkpoint's units must all sit on GPUs, or all on cpu"
            )
        if self.offload == "never":
            return (
                f"{self.method} with llm_int8_enable_fp32_cpu_offload builds cpu and disk units "
                "unquantized, and this pre-quantized checkpoint's weights do not load into them; "
                "every unit must sit on a GPU"
            )
        return ""

    def refused_placements(self, *, accelerators: bool) -> frozenset[str]:
        """Placements a search must never use: disk and cpu, except where offloading is allowed,
        or cpu without accelerators, where the whole model on cpu is the one map that loads (with
        accelerators that map is priced as the ``single:cpu`` baseline, not searched)."""
        if self.offload == "allowed":
            return frozenset()
        if self.offload == "whole-cpu" and not accelerators:
            return frozenset({"disk"})
        return frozenset(OFFLOAD)


@dataclass(frozen=True)
class ModelGraph:
    """A model as the tuner sees it: units in execution order and the data that flows between them.

    Args:
        model_name: what the user named (path or hub id).
        architecture: the transformers class, e.g. ``LlamaForCausalLM``.
        dtype: the dtype the model is loaded in.
        fingerprint: stable digest of architecture, config, dtype and weights identity.
        units: placeable units in execution order; units that never ran come right before the
            unit that follows them in registration order.
        edges: data flow between units for the workload the graph was traced with.
        tied_groups: groups of unit names that share a parameter and must share a device.
        no_split_classes: module classes that a device map never splits.
        weights: where the weights come from: ``safetensors``, ``config-only`` or ``pytorch``.
        quantization: how a quantized checkpoint's quantizer loads it; None for plain weights.
        device_unit: the unit holding the model's first parameter, whose device is what
            ``model.device`` says (``generate`` reads it); empty when unknown.
    """

    model_name: str
    architecture: str
    dtype: str
    fingerprint: str
    units: tuple[Unit, ...]
    edges: tuple[Edge, ...] = ()
    tied_groups: tuple[tuple[str, ...], ...] = ()
    no_split_classes: tuple[str, ...] = ()
    weights: str = "config-only"
    quantization: Quantization | None = None
    device_unit: str = ""

    def __post_init__(self) -> None:
        names = [unit.name for unit in self.units]
        if len(set(names)) != len(names):
            raise ValueError("a model graph names a unit twice")
        known = set(names) | {INPUT}
        for edge in self.edges:
            if edge.producer not in known or edge.consumer not in known:
                raise ValueError(f"edge {edge.producer!r} -> {edge.consumer!r} names an unknown unit")
        for group in self.tied_groups:
            if not set(group) <= set(names):
                raise ValueError(f"tied group {group} names an unknown unit")
        if self.device_unit and self.device_unit not in known:
            raise ValueError(f"the device unit {self.device_unit!r} is not a unit of the graph")

    @property
    def unit_names(self) -> tuple[str, ...]:
        return tuple(unit.name for unit in self.units)

    @property
    def total_bytes(self) -> int:
        return sum(unit.bytes for unit in self.units)

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)

    def placement_groups(self) -> list[list[int]]:
        """Unit indices that must share a placement: every unit alone, except that tied groups
        (overlapping ones merged) stay together. Sorted by their first index."""
        index = {name: i for i, name in enumerate(self.unit_names)}
        parent = list(range(len(index)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for group in self.tied_groups:
            members = [index[name] for name in group]
            for other in members[1:]:
                parent[find(other)] = find(members[0])
        grouped: dict[int, list[int]] = {}
        for i in range(len(index)):
            grouped.setdefault(find(i), []).append(i)
        return sorted(grouped.values(), key=lambda members: members[0])


@dataclass(frozen=True)
class UnitProfile:
    """What one unit costs on one compute device in one phase.

    Args:
        unit: the unit's name.
        device: the compute device, as a placement key (``cpu``, ``0``, ``1``...).
        phase: prefill or one decode step.
        time_s: median forward time in seconds.
        activation_peak_bytes: peak of live bytes the forward allocated (outputs and cache
            growth included; weights and inputs excluded).
        output_bytes: bytes of the tensors the unit returns.
        cache_bytes: bytes the unit added to the KV cache in this phase.
        kv_bytes_per_token: cache bytes one more token of context costs (measured in decode).
        measured_as: the unit whose measurement this is: itself, or an identical unit measured
            earlier in the same pass.
        repeats: how many timed runs the median is over.
    """

    unit: str
    device: str
    phase: Phase
    time_s: float
    activation_peak_bytes: int
    output_bytes: int
    cache_bytes: int = 0
    kv_bytes_per_token: int = 0
    measured_as: str = ""
    repeats: int = 1

    def __post_init__(self) -> None:
        for label, value in (
            ("activation peak", self.activation_peak_bytes),
            ("output", self.output_bytes),
            ("cache", self.cache_bytes),
            ("KV per token", self.kv_bytes_per_token),
        ):
            if value < 0:
                raise ValueError(f"unit {self.unit!r}: {label} bytes must not be negative ({value})")
        if self.time_s < 0:
            raise ValueError(f"unit {self.unit!r}: negative time {self.time_s}")

    @property
    def shared(self) -> bool:
        return bool(self.measured_as) and self.measured_as != self.unit


@dataclass(frozen=True)
class Device:
    """A place a unit can live.

    Args:
        key: the placement as device maps spell it: ``0``, ``1``... for GPUs, ``mps``, ``cpu``,
            ``disk``.
        kind: ``cuda``, ``mps``, ``cpu`` or ``disk``.
        name: the product name (GPU model, CPU model, or the disk's folder).
        total_memory: bytes of memory (or free disk space for ``disk``).
        free_memory: bytes free when measured.
        peak_flops: dense matmul FLOP/s by dtype, measured or from a spec sheet.
        memory_bandwidth: bytes per second of device memory (copy throughput when measured).
        runtime_overhead: bytes the runtime takes before any tensor (CUDA context, allocator
            slack); a device map can never use them.
        kernel_s: seconds each kernel (an aten op that does work, views aside) costs in eager
            PyTorch beyond its roofline time: the dispatcher's and the launch's fixed cost.
            Measured from a loop of tiny ops, or a spec's figure; 0 when unknown.
    """

    key: str
    kind: str
    name: str
    total_memory: int
    free_memory: int
    peak_flops: dict[str, float] = field(default_factory=dict)
    memory_bandwidth: float = 0.0
    runtime_overhead: int = 0
    kernel_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in {"cuda", "mps", "cpu", "disk"}:
            raise ValueError(f"device {self.key!r}: unknown kind {self.kind!r}")
        if self.total_memory < 0 or self.free_memory < 0 or self.runtime_overhead < 0:
            raise ValueError(f"device {self.key!r}: memory must not be negative")
        if self.memory_bandwidth < 0 or self.kernel_s < 0 or any(v < 0 for v in self.peak_flops.values()):
            raise ValueError(f"device {self.key!r}: speeds must not be negative")


@dataclass(frozen=True, slots=True)
class Link:
    """A transfer path: moving `n` bytes from `src` to `dst` takes ``alpha_s + n / beta``.

    `alpha_s` is paid per transfer: per tensor when accelerate streams a unit's weights (one copy
    per parameter), per edge for activations.
    """

    src: str
    dst: str
    alpha_s: float
    beta_bytes_per_s: float

    def __post_init__(self) -> None:
        if self.alpha_s < 0:
            raise ValueError(f"link {self.src}->{self.dst}: negative latency {self.alpha_s}")
        if self.beta_bytes_per_s <= 0:
            raise ValueError(f"link {self.src}->{self.dst}: bandwidth must be positive")

    def seconds(self, nbytes: int) -> float:
        return self.alpha_s + nbytes / self.beta_bytes_per_s


@dataclass(frozen=True)
class HardwareProfile:
    """Devices and the links between them, measured on this machine or read from a spec file.

    Args:
        devices: the devices; keys are unique.
        links: transfer paths between devices. ``disk -> cpu`` is a read from the storage
            device itself (the page cache does not hold the file).
        source: ``measured``, ``described`` (no speeds) or ``spec``.
        host: identity of the machine, without its host name.
        page_cache: ``disk -> cpu`` when the file's pages are already in RAM, as happens when the
            host has room to cache what a map offloads: the read is then a memory mapping, not
            I/O. None when not measured (spec files describe the cold device only).
        busy: why the speeds may not be this machine's (other processes loaded it while it was
            measured), in one line; empty for a measurement on a quiet machine.
        pageable: ``cpu -> i`` and ``i -> cpu`` copies from and to pageable (not pinned) host
            memory, one synchronous copy per tensor: the path accelerate's hooks take when they
            stream an offloaded unit's weights (``links`` holds the pinned path, the bus's best
            case). A pair missing here is priced on its pinned link (`host_copy` says which).
        generate_step_s: seconds ``generate`` spends per new token beyond the model's forward
            (logits processing, stopping criteria, cache bookkeeping); 0 when unknown.
        hook_call_s: seconds one call of an accelerate ``AlignDevicesHook`` costs beyond the
            copies it makes (its pre- and post-forward walk the inputs and outputs); paid on
            every hooked module call of a map that has hooks; 0 when unknown.
        safetensors_entry_s: seconds opening a safetensors file costs per tensor its header
            lists, paid on every weight a ``disk`` unit reads (`Unit.file_tensors`); 0 when unknown.
        forward_call_s: seconds a model's forward costs once per call beyond its units' kernels
            (its top-level Python: the attention mask, the cache positions, the output object),
            paid on every forward, the prefill and each decode step; 0 when unknown.
        method: the version of `tuner hardware`'s way of measuring that took the figures
            (`profiler.hardware.MEASURING_METHOD` then); 0 for a spec, a description, or a
            profile stored before versions were kept. A stored profile of an older way is
            measured again before it prices a plan: its figures leave out, or take otherwise,
            costs the model now prices.
    """

    devices: tuple[Device, ...]
    links: tuple[Link, ...] = ()
    source: str = "measured"
    host: str = ""
    page_cache: Link | None = None
    busy: str = ""
    pageable: tuple[Link, ...] = ()
    generate_step_s: float = 0.0
    hook_call_s: float = 0.0
    safetensors_entry_s: float = 0.0
    forward_call_s: float = 0.0
    method: int = 0

    def __post_init__(self) -> None:
        # a set: a spec's shorthands give every ordered pair of GPUs (a million links for 1000)
        keys = {device.key for device in self.devices}
        if len(keys) != len(self.devices):
            raise ValueError("a hardware profile names a device twice")
        for link in self.links:
            if link.src not in keys or link.dst not in keys:
                raise ValueError(f"link {link.src}->{link.dst} names an unknown device")
        if self.page_cache is not None and (self.page_cache.src, self.page_cache.dst) != ("disk", "cpu"):
            raise ValueError(
                f"the page cache link goes disk->cpu, not {self.page_cache.src}->{self.page_cache.dst}"
            )
        for link in self.pageable:
            if "cpu" not in (link.src, link.dst) or link.src not in keys or link.dst not in keys:
                raise ValueError(f"pageable link {link.src}->{link.dst} does not join the cpu and a device")
        if min(self.generate_step_s, self.hook_call_s, self.safetensors_entry_s, self.forward_call_s) < 0:
            raise ValueError("host overheads must not be negative")
        if self.method < 0:
            raise ValueError(f"a measuring method's version is not negative (got {self.method})")

    @property
    def fingerprint(self) -> str:
        """Stable across measurements: identity and size of the devices, not their speeds."""
        return stable_hash(
            {
                "host": self.host,
                "devices": [
                    [d.key, d.kind, d.name, d.total_memory] for d in self.devices if d.kind != "disk"
                ],
            }
        )

    @property
    def compute_devices(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind in {"cuda", "mps", "cpu"})

    def device(self, key: str) -> Device:
        for device in self.devices:
            if device.key == key:
                return device
        raise KeyError(key)

    def link(self, src: str, dst: str) -> Link:
        for link in self.links:
            if link.src == src and link.dst == dst:
                return link
        raise KeyError((src, dst))

    def host_copy(self, src: str, dst: str) -> tuple[Link, bool]:
        """The link a copy between the cpu's pageable memory and device `dst` (or from `src` to
        it) takes, and whether it is the pageable one: without a pageable figure for the pair,
        the pinned link stands in, optimistic by the staging copy it leaves out.

        Raises:
            KeyError: neither link exists.
        """
        for link in self.pageable:
            if link.src == src and link.dst == dst:
                return link, True
        return self.link(src, dst), False

    @property
    def pinned_only(self) -> tuple[str, ...]:
        """Host links ``src->dst`` that have no pageable figure, so streaming over them is priced
        on the pinned link; empty when every accelerator's pair has one."""
        pageable = {(link.src, link.dst) for link in self.pageable}
        return tuple(
            f"{link.src}->{link.dst}"
            for link in self.links
            if "cpu" in (link.src, link.dst)
            and "disk" not in (link.src, link.dst)
            and (link.src, link.dst) not in pageable
        )


@dataclass(frozen=True)
class ModelProfile:
    """A model measured on a machine for a workload: the graph and every unit's costs.

    `busy` says, in one line, why the times may not be this machine's (other processes loaded it
    while the units were timed); empty for a measurement on a quiet machine.
    """

    graph: ModelGraph
    workload: Workload
    hardware_fingerprint: str
    units: tuple[UnitProfile, ...]
    full: bool = False
    seconds: float = 0.0
    busy: str = ""

    def __post_init__(self) -> None:
        known = set(self.graph.unit_names)
        for profile in self.units:
            if profile.unit not in known:
                raise ValueError(f"profile of unknown unit {profile.unit!r}")

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.device for p in self.units))


@dataclass(frozen=True)
class DeviceMap:
    """Where each unit lives: ``0``, ``1``... (GPU index), ``mps``, ``cpu`` or ``disk``.

    Placements are kept as strings; `to_hf` gives the dict ``from_pretrained(device_map=...)``
    takes, with GPU indices as integers.

    Example:
        >>> dmap = DeviceMap.from_hf({"model": 0, "lm_head": "cpu"}, ["model.embed", "lm_head"])
        >>> dmap.to_hf()
        {'model.embed': 0, 'lm_head': 'cpu'}
        >>> dmap.main_device
        '0'
    """

    placements: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        names = [unit for unit, _ in self.placements]
        if len(set(names)) != len(names):
            raise ValueError("a device map assigns a unit twice")
        for unit, place in self.placements:
            if not is_placement(place):
                raise ValueError(f"unit {unit!r}: {place!r} is not a device (use 0, 1, ..., mps, cpu, disk)")

    @classmethod
    def from_hf(
        cls,
        mapping: dict[str, int | str],
        unit_names: tuple[str, ...] | list[str],
        tensorless: Collection[str] = (),
    ) -> DeviceMap:
        """Expand a map over any module names (accelerate's coarse ``{"model": 0}`` included) to
        one entry per unit, the way accelerate resolves a name: the longest matching prefix. A
        unit the map names only by its parts (accelerate's planner splits a parametrized module
        that is one unit here) goes where its parts all go; parts placed apart cannot run. A unit
        in `tensorless` (a dropout: no weights to place) that the map leaves out, as
        ``from_pretrained`` lets it, runs where its inputs are: with the unit before it (the
        first with the unit after it)."""
        placements: list[tuple[str, str | None]] = []
        for unit in unit_names:
            parts = unit.split(".")
            for end in range(len(parts), -1, -1):
                prefix = ".".join(parts[:end])
                if prefix in mapping:
                    try:
                        placements.append((unit, to_key(mapping[prefix])))
                    except ValueError as exc:
                        raise ValueError(f"{prefix or 'the whole model'!r}: {exc}") from None
                    break
            else:
                inside = {to_key(place) for name, place in mapping.items() if name.startswith(f"{unit}.")}
                if len(inside) > 1:
                    apart = ", ".join(sorted(inside))
                    raise ValueError(f"the device map places the parts of {unit!r} apart ({apart})")
                if not inside and unit not in tensorless:
                    raise ValueError(
                        f"the device map places no module that contains {unit!r}: every unit that "
                        "holds a weight or a buffer needs a place"
                    )
                placements.append((unit, inside.pop() if inside else None))
        placed = [place for _, place in placements if place is not None]
        if not placed:
            raise ValueError("the device map places no unit that holds a tensor")
        resolved, last = [], placed[0]
        for unit, place in placements:
            last = place if place is not None else last
            resolved.append((unit, last))
        return cls(tuple(resolved))

    def to_hf(self) -> dict[str, int | str]:
        return {unit: to_hf(place) for unit, place in self.placements}

    def placement(self, unit: str) -> str:
        for name, place in self.placements:
            if name == unit:
                return place
        raise KeyError(unit)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(place for _, place in self.placements))

    @property
    def main_device(self) -> str:
        """Where offloaded units and the model's inputs live at run time: the lowest GPU (or mps)
        in the map, else the cpu."""
        return main_device(self.devices)

    def broken_constraints(
        self, pins: Mapping[str, str], excluded: Collection[str], *, pin: str = "pin"
    ) -> str:
        """Which of `pins` (unit -> placement) and `excluded` devices the map does not keep, in
        one line, each pin named as `pin` says; empty when it keeps them all.

        Example:
            >>> dmap = DeviceMap((("model", "0"), ("lm_head", "cpu")))
            >>> dmap.broken_constraints({"lm_head": "disk", "model": "0"}, {"0"})
            'pin lm_head=disk, excluded 0'
        """
        placements = dict(self.placements)
        broken = [f"{pin} {unit}={place}" for unit, place in pins.items() if placements.get(unit) != place]
        broken += [f"excluded {device}" for device in self.devices if device in excluded]
        return ", ".join(broken)


@dataclass(frozen=True)
class PhaseCost:
    """Seconds of one forward pass, split by what they are spent on: kernels, weights streamed
    in, activations moved between devices, and the host's fixed costs (accelerate's hooks, the
    forward's own Python, and ``generate``'s own work per decode step)."""

    compute_s: float
    stream_s: float
    transfer_s: float
    overhead_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.stream_s + self.transfer_s + self.overhead_s

    def scaled(self, factor: float) -> PhaseCost:
        return PhaseCost(
            self.compute_s * factor,
            self.stream_s * factor,
            self.transfer_s * factor,
            self.overhead_s * factor,
        )


@dataclass(frozen=True)
class Calibration:
    """What maps measured on a machine took over what the cost model predicted, per phase: the
    factors ``optimize --calibrate`` multiplies each phase's predicted seconds by.

    Args:
        prefill: measured over predicted seconds of the prefill, the median over the maps.
        decode: the same for one decode step; 1.0 when no measured map generated tokens.
        maps: how many measured maps the factors come from.

    Example:
        >>> Calibration.from_ratios([(1.5, 2.0), (1.25, None), (2.0, 3.0)])
        Calibration(prefill=1.5, decode=2.5, maps=3)
    """

    prefill: float
    decode: float
    maps: int

    def __post_init__(self) -> None:
        for label, factor in (("prefill", self.prefill), ("decode", self.decode)):
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"calibration: the {label} factor must be positive and finite ({factor})")
        if self.maps < 1:
            raise ValueError(f"calibration: from at least one measured map ({self.maps})")

    @classmethod
    def from_ratios(cls, ratios: Iterable[tuple[float | None, float | None]]) -> Calibration | None:
        """The median ratio per phase over (prefill, decode) ratios of measured maps, a decode
        ratio None where a map generated no second token; None without a prefill ratio. The
        median, so one map measured in a bad moment does not set the factor."""
        pairs = [(prefill, decode) for prefill, decode in ratios if prefill is not None]
        if not pairs:
            return None
        decodes = [decode for _, decode in pairs if decode is not None]
        return cls(
            prefill=statistics.median(prefill for prefill, _ in pairs),
            decode=statistics.median(decodes) if decodes else 1.0,
            maps=len(pairs),
        )


@dataclass(frozen=True)
class DeviceMemory:
    """Peak bytes on one device under a map, by what holds them, against the device's limit."""

    device: str
    weights: int
    offloaded_buffers: int
    kv_cache: int
    working_set: int
    overhead: int
    limit: int

    @property
    def total(self) -> int:
        return self.weights + self.offloaded_buffers + self.kv_cache + self.working_set + self.overhead

    @property
    def parts(self) -> dict[str, int]:
        """The total by what holds it, in words a person reads (``KV cache``), in a fixed order."""
        return {
            "weights": self.weights,
            "offloaded units' buffers": self.offloaded_buffers,
            "KV cache": self.kv_cache,
            "working set": self.working_set,
            "runtime": self.overhead,
        }

    @property
    def over_by(self) -> int:
        """Bytes past the limit; zero or less when the device fits."""
        return self.total - self.limit

    @property
    def fits(self) -> bool:
        return self.over_by <= 0


@dataclass(frozen=True)
class Prediction:
    """What a device map is predicted to cost for a workload: latency and memory per device.

    With a `calibration`, each phase's seconds are the cost model's times its factor.
    """

    prefill: PhaseCost
    decode: PhaseCost
    new_tokens: int
    memory: tuple[DeviceMemory, ...]
    calibration: Calibration | None = None

    @property
    def modelled_s(self) -> tuple[float, float]:
        """(prefill, one decode step) seconds as the cost model put them, before any calibration:
        what a measurement is held against to learn a calibration."""
        if self.calibration is None:
            return self.prefill.total_s, self.decode.total_s
        return self.prefill.total_s / self.calibration.prefill, self.decode.total_s / self.calibration.decode

    @property
    def latency_s(self) -> float:
        """A generate call: the prompt's forward (which yields the first token), then one decode
        step per further token."""
        return self.prefill.total_s + decode_steps(self.new_tokens) * self.decode.total_s

    @property
    def feasible(self) -> bool:
        return all(device.fits for device in self.memory)

    @property
    def shortfalls(self) -> tuple[DeviceMemory, ...]:
        return tuple(device for device in self.memory if not device.fits)


@dataclass(frozen=True)
class Candidate:
    """A named device map and what it costs.

    Args:
        name: where it comes from: an accelerate strategy (``auto``), ``single:0``, ``exact``,
            or ``trial 17`` of the search.
        device_map: the map.
        prediction: its modelled cost, once priced.
        trial: the Optuna trial number that produced or evaluated it, if any.
        measured_s: generate latency measured by loading and running the map, if it was.
        measure_error: why the map failed when loaded and run for real (``out of memory on
            cpu``, ``load failed: ...``), in one line; empty unless it failed. A map that failed
            is infeasible whatever its prediction says.
        lower_bound_s: for the exact optimum whose solver reached its time limit first: no map
            of its class has a lower predicted latency than this; None when the map is proven
            optimal, and for every other candidate.
        measured_prefill_s: of a map measured on the machine it was planned for, the measured
            prefill (call start to the first token's logits); None otherwise.
        measured_decode_s: likewise, one decode step (None when fewer than two tokens).
        measure_busy: why that measurement may not be the machine's (other processes loaded
            it meanwhile); empty when taken on a quiet machine.
        breaks: which of the request's pins and excluded devices the map does not keep
            (`DeviceMap.broken_constraints`): accelerate's maps are planned without them and are
            priced beside the others, but one that breaks them is no answer to the request.
    """

    name: str
    device_map: DeviceMap
    prediction: Prediction | None = None
    trial: int | None = None
    measured_s: float | None = None
    measure_error: str = ""
    lower_bound_s: float | None = None
    measured_prefill_s: float | None = None
    measured_decode_s: float | None = None
    measure_busy: str = ""
    breaks: str = ""

    def __post_init__(self) -> None:
        for label, seconds in (("prefill", self.measured_prefill_s), ("decode", self.measured_decode_s)):
            if seconds is not None and not 0 <= seconds < math.inf:
                raise ValueError(f"candidate {self.name!r}: measured {label} must be finite and not negative")
        if self.lower_bound_s is not None and not 0 <= self.lower_bound_s < math.inf:
            raise ValueError(f"candidate {self.name!r}: a lower bound must be finite and not negative")
        if self.measured_s is not None and self.measured_s < 0:
            raise ValueError(f"candidate {self.name!r}: negative measured latency")
        if self.measure_error and self.measured_s is not None:
            raise ValueError(f"candidate {self.name!r}: a failed measurement has no latency")
        if "\n" in self.measure_error or "\n" in self.breaks:
            raise ValueError(f"candidate {self.name!r}: a measurement's failure and broken pins are one line")

    @property
    def feasible(self) -> bool:
        """Predicted to fit its memory limits, keeping the request's pins and exclusions, and not
        seen to fail when loaded and run."""
        return (
            self.prediction is not None
            and self.prediction.feasible
            and not self.measure_error
            and not self.breaks
        )

    @property
    def phase_ratios(self) -> tuple[float | None, float | None]:
        """Measured over modelled seconds of (prefill, one decode step), against the cost model's
        own figures (uncalibrated); None for a phase not measured or predicted to take no time.

        Example:
            >>> prediction = Prediction(PhaseCost(0.25, 0, 0), PhaseCost(0.0625, 0, 0), 4, ())
            >>> dmap = DeviceMap((("lm_head", "cpu"),))
            >>> timed = Candidate("auto", dmap, prediction, measured_prefill_s=0.375, measured_decode_s=0.125)
            >>> timed.phase_ratios
            (1.5, 2.0)
        """
        if self.prediction is None:
            return None, None
        modelled = self.prediction.modelled_s
        measured = (self.measured_prefill_s, self.measured_decode_s)
        return (
            measured[0] / modelled[0] if measured[0] is not None and modelled[0] > 0 else None,
            measured[1] / modelled[1] if measured[1] is not None and modelled[1] > 0 else None,
        )

    @property
    def gap(self) -> float | None:
        """How far above the best possible latency its own may be, relative to it (0.03: within
        3%), when `lower_bound_s` is known."""
        if self.lower_bound_s is None or self.prediction is None or not self.prediction.latency_s > 0:
            return None
        return max(0.0, 1 - self.lower_bound_s / self.prediction.latency_s)


class RunStatus(str, enum.Enum):
    """Where a tuning run stands; an interrupted run can be resumed. A queued run waits for a
    worker (`tuner worker`) to take it; a failed one says why in `Run.error`."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(frozen=True)
class Run:
    """One `tuner optimize`: what was asked, what was found, how long each phase took.

    Args:
        id: the database id (0 until stored).
        key: digest of everything that makes the result reusable: model and hardware
            fingerprints, workload, memory limits, pins and excluded devices.
        model_name, model_fingerprint: the model as named and as identified.
        hardware_name, hardware_fingerprint: ``this machine`` or the spec's name, and its identity.
        workload: the workload tuned for.
        max_memory: bytes per device key the maps had to fit in.
        pins: units forced onto a device, as (unit, placement) pairs.
        exclude: devices the maps may not use.
        study_name: the Optuna study holding every trial, in the same database.
        status: running, complete, interrupted or failed.
        winner: the best map found, or None while none is feasible.
        baselines: accelerate's strategies, single devices and the exact optimum, all priced.
        trials: how many Optuna trials ran.
        phase_seconds: seconds spent per phase (``profile``, ``baselines``, ``exact``, ``search``,
            and ``measure`` once the best maps were loaded and timed for real).
        created_at: ISO 8601 time the run started (UTC).
        requested_trials: for a run asked for through the queue (``POST /v1/runs``), the trials
            its request asked for, which every worker that takes it searches to; None for a run
            of `optimize`.
        requested_timeout_s: for a run of the queue, the seconds its search may take in all,
            counted from when its first worker starts searching (workers that join or resume
            it stop at the same moment); None: no limit.
        error: why the run failed, in one line; empty unless it did.
        inputs: what the model takes as a prompt (`INPUT_KINDS`): a vision or speech model's
            workload has no prompt of `seq` tokens (`Workload.describe`).

    A queued run holds the request as asked, nothing prepared yet: an empty `key` and empty
    fingerprints until a worker fills them in (`Store.adopt_run`).
    """

    id: int
    key: str
    model_name: str
    model_fingerprint: str
    hardware_name: str
    hardware_fingerprint: str
    workload: Workload
    max_memory: dict[str, int]
    pins: tuple[tuple[str, str], ...]
    exclude: tuple[str, ...]
    study_name: str
    status: RunStatus
    winner: Candidate | None = None
    baselines: tuple[Candidate, ...] = ()
    trials: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    requested_trials: int | None = None
    error: str = ""
    requested_timeout_s: float | None = None
    inputs: str = "text"

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"unknown inputs {self.inputs!r}; choose one of {', '.join(INPUT_KINDS)}")
        if self.trials < 0:
            raise ValueError("a run cannot have a negative number of trials")
        if self.requested_trials is not None and self.requested_trials < 0:
            raise ValueError("a run cannot ask for a negative number of trials")
        if self.requested_timeout_s is not None and not 0 < self.requested_timeout_s < math.inf:
            raise ValueError("a run's time limit must be a positive number of seconds")
        if "\n" in self.error:
            raise ValueError("a run's error must be one line")
        if any(limit < 0 for limit in self.max_memory.values()):
            raise ValueError("memory limits must not be negative")

    @property
    def measured(self) -> bool:
        """Whether the run's best maps were loaded and timed for real (``optimize --measure``)."""
        return "measure" in self.phase_seconds

    @property
    def planned_limits(self) -> dict[str, int]:
        """Bytes each memory device was planned against: the limits asked for, and for the other
        devices the winner uses, what the hardware had free (its prediction's limits); disk,
        which ``max_memory`` does not take, left out."""
        used = self.winner.prediction.memory if self.winner and self.winner.prediction else ()
        found = {memory.device: memory.limit for memory in used if memory.device != "disk"}
        return {**found, **self.max_memory}

    def exported(self, *, with_max_memory: bool = False) -> dict[str, object]:
        """The winner's map as `tuner export` writes it: ``{module: device}``, what
        ``from_pretrained(device_map=...)`` takes; with `with_max_memory`, ``{"device_map": ...,
        "max_memory": ..., "dtype": ...}``, ``from_pretrained``'s keyword arguments for loading it
        as it was planned: within the limits (`planned_limits`; GPU keys as text, as JSON
        writes them) and in the dtype the run priced (another dtype, the checkpoint's float32 for
        a run in bfloat16, takes twice the bytes).

        Raises:
            ValueError: the run has no winner (`no_map` says why).
        """
        if self.winner is None:
            raise ValueError(self.no_map)
        device_map = self.winner.device_map.to_hf()
        if not with_max_memory:
            return dict(device_map)
        limits = {str(to_hf(key)): limit for key, limit in self.planned_limits.items()}
        return {"device_map": device_map, "max_memory": limits, "dtype": self.workload.dtype}

    @property
    def no_map(self) -> str:
        """Why the run has no map to give, in one line: its status, and why it failed if it did.
        Only a complete run searched and found none that fits; a queued one was never searched."""
        if self.status is RunStatus.COMPLETE:
            return f"run {self.id} has no map that fits (complete)"
        if self.status is RunStatus.FAILED:
            failed = f": {self.error}" if self.error else ""
            return f"run {self.id} has no map (failed{failed})"
        return f"run {self.id} has no map yet ({self.status.value})"

    @property
    def unfinished(self) -> str:
        """Why the run's map is its best so far rather than its answer, in one line; empty for a
        complete run."""
        if self.status is RunStatus.RUNNING:
            return f"run {self.id} is still being tuned: its map is the best so far"
        if self.status is RunStatus.INTERRUPTED:
            return (
                f"run {self.id} was interrupted after {self.trials} trials: its map is the best so far; "
                f"tuner optimize --resume {self.id} finishes it"
            )
        if self.status is RunStatus.FAILED:
            why = f" ({self.error})" if self.error else ""
            return f"run {self.id} failed{why}: its map is the best before it did"
        return ""

    def baseline(self, name: str) -> Candidate:
        """The baseline called `name`: one of accelerate's strategies (``auto``, ``balanced``,
        ``balanced_low_0``, ``sequential``), a single device (``single:0``, ``single:cpu``) or
        ``exact``, the cost model's optimum.

        Raises:
            ConstraintError: the run priced no baseline of that name; the message lists its own.
        """
        for candidate in self.baselines:
            if candidate.name == name:
                return candidate
        priced = ", ".join(candidate.name for candidate in self.baselines) or "none"
        raise ConstraintError(f"run {self.id} priced no baseline {name!r}; it priced: {priced}")
