"""The fixed costs eager PyTorch, ``generate`` and accelerate's hooks pay on this machine.

A roofline of FLOPs and bytes prices a kernel's work; four costs it leaves out dominate small
decode steps, and are measured here:

* per kernel: what one more kernel of a model's layer costs the host: decode steps of two tiny
  Llamas (hidden 64, random weights: their kernels do next to no work), 2 and 8 layers deep, the
  difference of their times over the difference of the kernels they launch, counted as the meta
  pass counts a unit's (`profiler.flops.kernels_launched`). A loop of bare
  in-place adds would see only the dispatcher and the kernel: a layer also runs its modules'
  Python around every operator, and on this project's development machine that made a layer's
  kernel cost 3.5-4.6x a bare add (13-17 us against 3.7-3.9 us);
* per forward: what the shallower step costs beyond its kernels at that price, the same whatever
  the model's depth: the forward's own Python (the attention mask, the cache positions, the
  output object);
* per ``generate`` step: a tiny Llama (4 layers, hidden 64, random weights) generating 33 tokens
  against the same forwards run by hand with its KV cache, prefill then 32 decode steps; the
  difference over the 32 steps is ``generate``'s own work per token (logits processors, stopping
  criteria, cache bookkeeping);
* per hooked module call: the same ``generate`` with accelerate's hooks on every unit (what a
  map that spans devices gets, `profiler.model`), less the plain one, over the hooked calls
  counted in it.

Each figure is the best of several samples (a neighbour's burst only ever slows one down), the
samples of a difference's two sides interleaved, and each side's best taken, not the best
difference: a disturbed second side would make one difference look small.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from profiler.hardware._dispatch import dispatch_quietly
from profiler.hardware._dispatch import hooked_calls
from profiler.hardware._lazy import LazyModule
from profiler.hardware._tiny import tiny_llama

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = ["host_overheads", "kernel_and_forward_seconds"]

#: The two depths of tiny Llama whose decode steps give the cost per kernel.
_KERNEL_DEPTHS = (2, 8)
#: Decode steps timed per depth for the cost per kernel at least: the best of each is kept.
_MIN_STEPS = 20
#: Tokens the tiny model generates: 32 decode steps after the prefill.
_NEW_TOKENS = 33
_PROMPT = 16
#: Rounds of the three timings at least. Each figure is a difference of two bests, so it moves
#: with either side's noise: with 5 rounds repeated runs on a quiet machine spread 17.5% in the
#: generate step; a round costs a few tens of milliseconds.
_MIN_ROUNDS = 12


def kernel_and_forward_seconds(device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds per kernel of a model's layer, seconds per forward beyond its kernels) on
    `device`: the marginal cost of the deeper tiny Llama's decode step per kernel it launches
    more, and what the shallower step costs beyond its kernels at that price."""
    from profiler.flops import kernels_launched

    steps: list[tuple[Callable[[], object], int]] = []
    ids = torch.randint(0, 256, (1, _PROMPT), device=device)
    with torch.no_grad():
        for layers in _KERNEL_DEPTHS:
            model = tiny_llama(device, layers)
            output = model(ids, use_cache=True, logits_to_keep=1)
            token, cache = output.logits[:, -1:].argmax(-1), output.past_key_values
            # each step grows the cache by a token, which changes neither the kernels nor, at
            # this size, their work
            step = functools.partial(model, token, past_key_values=cache, use_cache=True)
            steps.append((step, kernels_launched(step)))
        best = [math.inf] * len(steps)
        for _ in range(max(repeats, _MIN_STEPS)):  # interleaved: a slow spell touches both
            for index, (timed_step, _) in enumerate(steps):
                best[index] = min(best[index], _timed(device, timed_step))
    (_, shallow), (_, deep) = steps
    per_kernel = max(best[1] - best[0], 0.0) / (deep - shallow)
    return per_kernel, max(best[0] - shallow * per_kernel, 0.0)


def host_overheads(device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds ``generate`` spends per decode step beyond the forward, seconds per hooked module
    call) on `device`, from a tiny Llama with and without accelerate's hooks."""
    plain, hooked = tiny_llama(device), tiny_llama(device)
    units = ["model.embed_tokens", "model.rotary_emb", *(f"model.layers.{i}" for i in range(4))]
    place = device.index if device.type == "cuda" else device.type
    dispatch_quietly(hooked, {name: place for name in [*units, "model.norm", "lm_head"]}, force_hooks=True)
    ids = torch.randint(0, 256, (1, _PROMPT), device=device)
    calls = hooked_calls(hooked, lambda: _generate(hooked, ids))
    rounds: dict[str, list[float]] = {"generate": [], "forwards": [], "hooked": []}
    for first in (True, *([False] * max(repeats, _MIN_ROUNDS))):
        samples = {
            "generate": _timed(device, lambda: _generate(plain, ids)),
            "forwards": _timed(device, lambda: _forwards(plain, ids)),
            "hooked": _timed(device, lambda: _generate(hooked, ids)),
        }
        if not first:  # the first round warms up
            for name, seconds in samples.items():
                rounds[name].append(seconds)
    generate, forwards, with_hooks = (min(rounds[name]) for name in ("generate", "forwards", "hooked"))
    step = max(generate - forwards, 0.0) / (_NEW_TOKENS - 1)
    hook = max(with_hooks - generate, 0.0) / calls
    return step, hook


def _generate(model: Any, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model.generate(ids, max_new_tokens=_NEW_TOKENS, min_new_tokens=_NEW_TOKENS, do_sample=False)


def _forwards(model: Any, ids: torch.Tensor) -> None:
    """The forwards ``generate`` makes, by hand: the prompt, then one token at a time."""
    with torch.no_grad():  # generate keeps the prompt's last logits only, so does this
        output = model(ids, use_cache=True, logits_to_keep=1)
        for _ in range(_NEW_TOKENS - 1):
            token = output.logits[:, -1:].argmax(-1)
            output = model(token, past_key_values=output.past_key_values, use_cache=True)


def _timed(device: torch.device, run: Callable[[], object]) -> float:
    _wait(device)
    started = time.perf_counter()
    run()
    _wait(device)
    return time.perf_counter() - started


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
