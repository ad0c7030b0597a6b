"""The HTML report: what it says about a hand-built run, and that a real browser draws its charts.

The browser test runs Debian's Chromium headless twice: ``--dump-dom`` after a probe script (added
to the test's copy of the page) has measured every chart, then ``--screenshot``, whose PNG is
decoded here with zlib to check that each chart's area holds its colours.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pytest

from reports.html import render
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload

MIB = 2**20
GIB = 2**30
NEW_TOKENS = 11  # the prefill yields the first token: 10 decode steps
UNITS = (
    "model.embed_tokens",
    "model.rotary_emb",
    *(f"model.layers.{i}" for i in range(6)),
    "model.norm",
    "lm_head",
)
# registration order: rotary_emb comes last, though it runs second
REGISTERED = tuple(u for u in UNITS if u != "model.rotary_emb") + ("model.rotary_emb",)
LIMITS = {"0": 1 * GIB, "1": 1 * GIB, "cpu": 8 * GIB, "disk": 64 * GIB}
EVIL = '<script>alert("pwned")</script> & co'

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
    "--force-device-scale-factor=1",
)
WINDOW_WIDTH = 1000
SECTIONS = ["header", "comparison", "placement", "memory", "units", "history"]
MEMORY_PARTS = ("weights", "offloaded_buffers", "kv_cache", "working_set", "overhead")


# --------------------------------------------------------------------------------------------
# a run built by hand


def graph(model_name: str = "tiny-llama") -> ModelGraph:
    units = tuple(
        Unit(
            name,
            "LlamaDecoderLayer" if ".layers." in name else "Module",
            param_bytes=0 if name == "model.rotary_emb" else 100 * MIB,
            buffer_bytes=64 if name == "model.rotary_emb" else 0,
        )
        for name in UNITS
    )
    return ModelGraph(model_name, "LlamaForCausalLM", "float16", "model-fp", units)


def placed(where: dict[str, str]) -> DeviceMap:
    """A map in registration order, as accelerate's planner lists it."""
    return DeviceMap(tuple((unit, where[unit]) for unit in REGISTERED))


def split(*blocks: tuple[str, int]) -> DeviceMap:
    """Consecutive blocks of units in execution order: ("0", 6), ("1", 4)."""
    where: dict[str, str] = {}
    start = 0
    for device, count in blocks:
        where.update(dict.fromkeys(UNITS[start : start + count], device))
        start += count
    assert start == len(UNITS)
    return placed(where)


def memory(device: str, weights_mib: int, kv_mib: int, buffers_mib: int = 0) -> DeviceMemory:
    overhead = 20 * MIB if device.isdigit() else 0
    return DeviceMemory(
        device, weights_mib * MIB, buffers_mib * MIB, kv_mib * MIB, 50 * MIB, overhead, LIMITS[device]
    )


def prediction(prefill_s: float, decode_s: float, *devices: DeviceMemory) -> Prediction:
    """Latency = prefill + (NEW_TOKENS - 1) x decode; the prefill split 80/0/20 into
    compute/stream/transfer."""
    return Prediction(
        prefill=PhaseCost(compute_s=prefill_s * 0.8, stream_s=0.0, transfer_s=prefill_s * 0.2),
        decode=PhaseCost(compute_s=decode_s, stream_s=0.0, transfer_s=0.0),
        new_tokens=NEW_TOKENS,
        memory=devices,
    )


WINNER_MAP = split(("0", 6), ("1", 4))
AUTO_MAP = split(("0", 5), ("1", 3), ("cpu", 2))
WINNER = prediction(0.1, 0.01, memory("0", 500, 100), memory("1", 300, 50))  # 200 ms
# auto: GPU 1 holds 1200 weights + 266 KV + 50 working set + 20 runtime = 1536 MiB, 512 MiB over its 1 GiB
AUTO = prediction(0.2, 0.03, memory("0", 500, 80, 1), memory("1", 1200, 266), memory("cpu", 200, 0))  # 500 ms
BALANCED = prediction(0.2, 0.02, memory("0", 500, 60), memory("1", 500, 60))  # 400 ms
ON_CPU = prediction(1.0, 0.1, memory("cpu", 800, 100))  # 2 s

# trial number -> predicted latency (None: not priced), whether it fits
TRIALS: dict[int, tuple[float | None, bool]] = {
    0: (0.9, True),
    1: (0.7, True),
    2: (0.3, False),
    3: (0.8, True),
    4: (None, False),
    5: (0.5, True),
    6: (0.1, False),
    7: (0.6, True),
    8: (0.2, True),
    9: (0.4, True),
}


def trial(number: int) -> Candidate:
    latency, fits = TRIALS[number]
    if latency is None:
        return Candidate(f"trial {number}", AUTO_MAP, None, trial=number)
    gpu1 = memory("1", 300 if fits else 1500, 50)
    return Candidate(
        f"trial {number}", WINNER_MAP, prediction(latency, 0.0, memory("0", 500, 100), gpu1), trial=number
    )


def make_run(
    *,
    model_name: str = "meta-llama/Llama-2-13b-hf",
    hardware_name: str = "rtx3090-rtx3060",
    status: RunStatus = RunStatus.COMPLETE,
    winner: bool = True,
) -> Run:
    baselines = (
        Candidate("auto", AUTO_MAP, AUTO, measured_s=0.4),
        Candidate("balanced", split(("0", 5), ("1", 5)), BALANCED),
        Candidate("sequential", split(("0", 8), ("1", 2)), None),
        Candidate("single:cpu", split(("cpu", 10)), ON_CPU),
        Candidate("exact", WINNER_MAP, WINNER),
    )
    return Run(
        id=7,
        key="run-key-123",
        model_name=model_name,
        model_fingerprint="model-fp",
        hardware_name=hardware_name,
        hardware_fingerprint="hardware-fp",
        workload=Workload(batch=2, seq=512, new_tokens=NEW_TOKENS, dtype="float16"),
        max_memory=LIMITS,
        pins=(("model.embed_tokens", "0"),),
        exclude=("disk",),
        study_name="tuner-study-7",
        status=status,
        winner=Candidate("trial 8", WINNER_MAP, WINNER, trial=8, measured_s=0.25) if winner else None,
        baselines=baselines,
        trials=len(TRIALS),
        phase_seconds={"profile": 1.5, "search": 12.25},
        created_at="2026-03-04T05:06:07+00:00",
    )


def candidates() -> list[Candidate]:
    """As the store lists them: baselines, then trials (given out of order here)."""
    return [*make_run().baselines, *(trial(n) for n in (3, 0, 9, 1, 2, 4, 5, 6, 7, 8))]


def profiles() -> list[UnitProfile]:
    return [
        UnitProfile(
            unit,
            device,
            phase,
            time_s=(index + 1) * (1e-3 if phase is Phase.PREFILL else 1e-4) * (10 if device == "cpu" else 1),
            activation_peak_bytes=(index + 1) * MIB,
            output_bytes=MIB,
        )
        for index, unit in enumerate(UNITS)
        for device in ("0", "cpu")
        for phase in (Phase.PREFILL, Phase.DECODE)
    ]


def full_report(**run_args: object) -> str:
    return render(make_run(**run_args), candidates(), graph(), profiles())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# reading the page back


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], chart: str, candidate: str) -> None:
        self.tag, self.attrs, self.chart, self.candidate = tag, attrs, chart, candidate
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Page(HTMLParser):
    """Every element with its attributes, the chart (``svg.chart``) it is drawn in and its text."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed: {[e.tag for e in self.stack]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        chart, candidate = "", ""
        for outer in reversed(self.stack):
            if outer.tag == "svg":
                chart, candidate = outer.attrs.get("class", ""), outer.attrs.get("data-candidate", "")
                break
        if tag == "svg":
            chart, candidate = values.get("class", ""), values.get("data-candidate", "")
        element = Element(tag, values, chart, candidate)
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1].tag == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element.text += data

    def find(self, cls: str, chart: str = "", candidate: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if cls in e.classes and chart in e.chart and (candidate is None or e.candidate == candidate)
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        found = [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def row(page: Page, name: str) -> dict[str, str]:
    """The comparison table's row of a candidate: cell class -> text."""
    tr = page.one("tr", data_candidate=name)
    start = page.elements.index(tr)
    cells: dict[str, str] = {"class": tr.attrs["class"]}
    for element in page.elements[start + 1 :]:
        if element.tag == "tr":
            break
        if element.tag == "td":
            cells[element.attrs.get("class", "").split()[-1]] = " ".join(element.text.split())
    return cells


# --------------------------------------------------------------------------------------------
# content


def test_a_report_is_one_self_contained_document() -> None:
    page = full_report()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<html") == 1 and page.count("<style>") == 1 and page.count("<script>") == 1
    # nothing to fetch: no linked files, no remote URL (the SVG namespace is a name, not a fetch)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc=|@import|@font-face", page)
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg")
    assert all(target.startswith("#") for target in re.findall(r"url\(([^)]*)\)", page))
    policy = Page(page).one("meta", http_equiv="Content-Security-Policy")  # and every element closes
    assert policy.attrs["content"].startswith("default-src 'none';")


def test_the_packaged_stylesheet_and_script_are_inlined() -> None:
    # read as an installed wheel would hand them out: package data next to reports/html/page.py
    package = files("reports.html")
    css = package.joinpath("style.css").read_text(encoding="utf-8")
    script = package.joinpath("report.js").read_text(encoding="utf-8")
    assert "svg.chart .hl" in css and "classList.add('hl')" in script  # the highlight has a style
    # inlined text ends its element at the first closing tag, wherever that is
    assert "</style" not in css.lower() and "</script" not in script.lower()
    page = full_report()
    assert re.findall(r"<style>(.*?)</style>", page, re.S) == [f"\n{css}"]
    assert re.findall(r"<script>(.*?)</script>", page, re.S) == [f"\n{script}"]
    assert not re.search(r"<link\b|<script\b[^>]*\bsrc=", page)  # nothing else to load


def test_text_from_the_run_is_escaped() -> None:
    page = render(
        make_run(model_name=EVIL, hardware_name='<b onclick="x">box</b>'), candidates(), graph(EVIL)
    )
    assert "<script>alert" not in page and "<b onclick" not in page
    assert page.count("<script") == 1  # the page's own
    assert html.escape(EVIL) in page
    parsed = Page(page)
    assert parsed.one("h1").text == f"Tuning run 7: {EVIL}"
    assert parsed.one("dd", data_field="hardware").text.startswith('<b onclick="x">box</b>')


def test_every_section_is_present() -> None:
    page = Page(full_report())
    assert [e.attrs["id"] for e in page.elements if e.tag in {"header", "section"}] == SECTIONS
    charts = [(e.attrs["class"], e.attrs.get("data-candidate", "")) for e in page.elements if e.tag == "svg"]
    assert charts == [
        ("chart placement", "winner"),
        ("chart placement", "auto"),
        ("chart memory", "winner"),
        ("chart memory", "auto"),
        ("chart units", ""),
        ("chart history", ""),
    ]


def test_the_header_tells_what_was_tuned_and_under_which_constraints() -> None:
    page = Page(full_report(status=RunStatus.COMPLETE))
    fields = {e.attrs["data-field"]: " ".join(e.text.split()) for e in page.elements if e.tag == "dd"}
    assert fields["model"] == "meta-llama/Llama-2-13b-hf model-fp"
    assert fields["hardware"] == "rtx3090-rtx3060 hardware-fp"
    assert fields["workload"] == "batch 2, seq 512, 11 new tokens, float16"
    assert fields["status"] == "complete"
    assert fields["trials"] == "10 study tuner-study-7"
    assert fields["memory limits"] == "GPU 0: 1.0 GiB, GPU 1: 1.0 GiB, cpu: 8.0 GiB, disk: 64.0 GiB"
    assert fields["pins"] == "model.embed_tokens → GPU 0"
    assert fields["excluded devices"] == "disk"
    assert fields["time per phase"] == "profile 1.50 s, search 12.25 s"
    verdict = " ".join(page.find("verdict")[0].text.split())
    assert verdict == (
        "Winner trial 8: 200.00 ms per generate call; exact optimum 200.00 ms (gap 0.0%); "
        "auto runs out of memory: accelerate plans from weight bytes alone, and GPU 1 needs 1.5 GiB "
        "(weights 1.2 GiB, KV cache 266.0 MiB, working set 50.0 MiB, runtime 20.0 MiB), 512.0 MiB over "
        "its 1.0 GiB limit; "
        "measured for real: the winner 250.00 ms, auto 400.00 ms."
    )
    assert not page.find("banner")


def test_a_vision_model_run_says_it_takes_images_and_heads_its_latency_forward() -> None:
    run = make_run()
    forward_only = dataclasses.replace(run.workload, new_tokens=0)
    vision = dataclasses.replace(run, inputs="vision", workload=forward_only)
    page = Page(render(vision, candidates(), graph(), profiles()))
    assert " ".join(page.one("dd", data_field="workload").text.split()) == (
        "batch 2, one image each, 0 new tokens, float16"
    )
    headings = [e.text for e in page.elements if e.tag == "th"]
    assert "forward" in headings and "generate" not in headings
    assert "prefill" not in headings and "per token" not in headings  # the forward is the prefill
    assert "prefill" in [e.text for e in Page(render(run, candidates(), graph(), profiles())).elements]
    assert "forward latency" in [e.text for e in page.elements if "axis-title" in e.classes]
    assert "generate" not in " ".join(e.attrs.get("title", "") for e in page.elements if e.tag == "th")
    assert " ".join(page.find("verdict")[0].text.split()).startswith("Winner trial 8: 200.00 ms per forward;")
    assert "generate" in [e.text for e in Page(render(run, candidates(), graph(), profiles())).elements]


def test_the_table_compares_the_winner_with_every_baseline() -> None:
    page = Page(full_report())
    names = [e.attrs["data-candidate"] for e in page.elements if e.tag == "tr" and "candidate" in e.classes]
    assert names == ["trial 8", "auto", "balanced", "sequential", "single:cpu", "exact"]
    winner = row(page, "trial 8")
    assert winner["name"] == "winner (trial 8)" and "winner" in winner["class"]
    assert (winner["generate"], winner["prefill"], winner["decode"]) == ("200.00 ms", "100.00 ms", "10.00 ms")
    assert winner["placement"] == "GPU 0×6 · GPU 1×4"
    assert winner["fits"] == "fits (tightest GPU 0: 670.0 MiB / 1.0 GiB)"
    assert row(page, "balanced")["speedup"] == "2.00×"
    assert row(page, "single:cpu")["speedup"] == "10.00×"
    assert row(page, "exact")["speedup"] == "1.00×"
    auto = row(page, "auto")
    assert "oom" in auto["class"]
    assert auto["generate"] == "500.00 ms" and auto["speedup"] == "— (OOM)"
    assert auto["oom"] == "OOM: GPU 1 over by 512.0 MiB"
    assert page.one("td", data_over_bytes=str(512 * MIB)).text.startswith("OOM")
    assert row(page, "sequential")["empty"] == "not priced"


def test_measured_latency_stands_beside_the_prediction_with_its_error() -> None:
    page = Page(full_report())
    winner, auto = row(page, "trial 8"), row(page, "auto")
    assert (winner["measured"], winner["error"]) == ("250.00 ms", "-20.0%")  # predicted 200 ms
    assert (auto["measured"], auto["error"]) == ("400.00 ms", "+25.0%")  # predicted 500 ms
    assert (row(page, "balanced")["measured"], row(page, "balanced")["error"]) == ("", "")
    # a trial measured by `--measure` gets a row of its own; the winner's trial is not listed twice
    measured = [dataclasses.replace(trial(9), measured_s=0.5), dataclasses.replace(trial(8), measured_s=0.25)]
    page = Page(render(make_run(), [*candidates(), *measured]))
    names = [e.attrs["data-candidate"] for e in page.elements if e.tag == "tr" and "candidate" in e.classes]
    assert names[-1] == "trial 9" and names.count("trial 8") == 1
    assert (row(page, "trial 9")["measured"], row(page, "trial 9")["error"]) == ("500.00 ms", "-20.0%")


def test_the_placement_diagram_draws_every_unit_on_its_device_in_execution_order() -> None:
    page = Page(full_report())
    for role, dmap in (("winner", WINNER_MAP), ("auto", AUTO_MAP)):
        blocks = page.find("unit", "placement", role)
        assert [b.attrs["data-unit"] for b in blocks] == list(UNITS)  # the graph's order, not the map's
        assert [int(b.attrs["data-index"]) for b in blocks] == list(range(len(UNITS)))
        assert {b.attrs["data-unit"]: b.attrs["data-device"] for b in blocks} == dict(dmap.placements)
        xs = [float(b.attrs["x"]) for b in blocks]
        assert xs == sorted(xs)
    offloaded = page.find("offloaded", "placement", "auto")
    assert [(b.attrs["data-unit"], b.attrs["data-exec"]) for b in offloaded] == [
        ("model.norm", "0"),
        ("lm_head", "0"),
    ]
    assert all(b.attrs["fill"].startswith("url(#hatch-auto-cpu") for b in offloaded)
    assert page.find("unit", "placement", "auto")[0].text.startswith(
        "#0 model.embed_tokens on GPU 0, 100.0 MiB"
    )
    lanes = [e.text for e in page.find("lane-label", "placement", "winner")]
    assert lanes == ["GPU 0", "GPU 1", "cpu"]  # disk is excluded
    assert [p.attrs["data-unit"] for p in page.find("pin", "placement", "winner")] == ["model.embed_tokens"]


def test_memory_bars_add_up_to_each_devices_peak_against_its_limit() -> None:
    page = Page(full_report())
    for role, predicted in (("winner", WINNER), ("auto", AUTO)):
        for device in predicted.memory:
            bars = [b for b in page.find("mem", "memory", role) if b.attrs["data-device"] == device.device]
            assert sum(int(b.attrs["data-bytes"]) for b in bars) == device.total
            parts = [b.attrs["data-part"] for b in bars]
            assert parts == [part for part in MEMORY_PARTS if getattr(device, part)]
            (limit,) = [
                x for x in page.find("limit", "memory", role) if x.attrs["data-device"] == device.device
            ]
            assert int(limit.attrs["data-bytes"]) == device.limit
    over = [e.text for e in page.find("over", "memory", "auto")]
    assert over == ["over by 512.0 MiB"]
    assert [e.text for e in page.find("mem-total", "memory", "winner")] == [
        "670.0 MiB / 1.0 GiB",
        "420.0 MiB / 1.0 GiB",
    ]


def test_the_per_unit_chart_has_a_bar_per_measurement() -> None:
    page = Page(full_report())
    times = page.find("unit-time", "units")
    assert len(times) == len(UNITS) * 2 * 2  # units x devices x phases
    layer = {
        (t.attrs["data-device"], t.attrs["data-phase"]): t
        for t in times
        if t.attrs["data-unit"] == "model.layers.3"
    }
    assert float(layer[("cpu", "prefill")].attrs["data-seconds"]) == pytest.approx(0.06)
    assert layer[("0", "decode")].text == "model.layers.3 on GPU 0, decode: 600 µs"
    weights = [m for m in page.find("unit-mem", "units") if m.attrs["data-part"] == "weights"]
    assert [int(m.attrs["data-bytes"]) for m in weights] == [u.bytes for u in graph().units]
    # a graph alone still charts the weights; profiles alone still chart the times
    alone = Page(render(make_run(), [], graph()))
    assert len(alone.find("unit-mem", "units")) == len(UNITS) and not alone.find("unit-time")
    assert len(Page(render(make_run(), [], None, profiles())).find("unit-time", "units")) == len(times)


def test_the_history_marks_each_trial_and_the_best_so_far() -> None:
    page = Page(full_report())
    marks = [e for e in page.find("trial", "history")]
    assert [int(e.attrs["data-trial"]) for e in marks] == sorted(TRIALS)
    kinds = {
        int(e.attrs["data-trial"]): ({"feasible", "infeasible", "unpriced"} & e.classes).pop() for e in marks
    }
    assert kinds == {
        n: "unpriced" if latency is None else "feasible" if fits else "infeasible"
        for n, (latency, fits) in TRIALS.items()
    }
    assert all(e.tag == "circle" for e in marks if "feasible" in e.classes)
    (best,) = page.find("best-so-far", "history")
    assert float(best.attrs["data-best"]) == pytest.approx(WINNER.latency_s)
    # a step line: it only goes down (SVG y grows downwards) and moves right
    points = [tuple(map(float, p.split(","))) for p in best.attrs["points"].split()]
    assert all(b[1] >= a[1] and b[0] >= a[0] for a, b in itertools.pairwise(points))
    assert {e.attrs["data-baseline"] for e in page.find("baseline", "history")} == {"exact", "auto"}
    assert "10 trials stored, 7 feasible" in page.one("section", id="history").text


def test_a_failed_run_says_why_in_its_banner() -> None:
    failed = dataclasses.replace(
        make_run(status=RunStatus.FAILED, winner=False), error="no such model folder: ./x"
    )
    banner = Page(render(failed, [])).find("banner")[0].text
    assert banner == "This run is failed (no such model folder: ./x): what follows is what was stored so far."


def test_a_running_run_without_winner_trials_or_profile_still_renders() -> None:
    page = render(make_run(status=RunStatus.RUNNING, winner=False), [])
    parsed = Page(page)
    assert "This run is running" in parsed.find("banner")[0].text
    assert parsed.find("verdict")[0].text == "No winner is stored yet."
    assert [e.attrs["data-candidate"] for e in parsed.find("chart", "placement") if e.tag == "svg"] == [
        "auto"
    ]
    messages = [" ".join(e.text.split()) for e in parsed.find("empty") if e.tag == "p"]
    assert messages == [
        "Planned for rtx3090-rtx3060: its units are priced from estimates of the spec's figures, which "
        "are not stored.",
        "No Optuna trial is stored for this run.",
    ]
    assert row(parsed, "auto")["speedup"] == ""
    here = Page(render(make_run(hardware_name="this machine", status=RunStatus.RUNNING, winner=False), []))
    said = [" ".join(e.text.split()) for e in here.find("empty") if e.tag == "p"]
    assert said[0] == "No model profile was given: `tuner profile` makes one."


def test_nothing_at_all_to_show_renders_every_section_empty() -> None:
    bare = dataclasses.replace(make_run(winner=False), baselines=(), max_memory={}, pins=(), exclude=())
    page = Page(render(bare, []))
    assert [e.attrs["id"] for e in page.elements if e.tag in {"header", "section"}] == SECTIONS
    assert not any(e.tag == "svg" for e in page.elements)
    assert page.find("verdict")[0].text.startswith("No feasible map was found")
    assert len(page.find("empty")) == 5


# --------------------------------------------------------------------------------------------
# a real browser

# Added to the test's copy of the page, after the report's own script: measures every chart and
# every data mark, hovers a unit, and writes what it saw into the DOM that --dump-dom prints.
PROBE = """<script>
(function () {
  var charts = [];
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var marks = svg.querySelectorAll(
      '[data-unit],[data-part],[data-trial],[data-baseline],.best-so-far,.limit');
    var drawn = Array.prototype.filter.call(marks, function (n) {
      var b = n.getBBox(); return b.width > 0 || b.height > 0;
    }).length;
    charts.push({chart: svg.getAttribute('class'), candidate: svg.getAttribute('data-candidate') || '',
                 x: box.left + window.scrollX, y: box.top + window.scrollY, w: box.width, h: box.height,
                 marks: marks.length, drawn: drawn});
  });
  var unit = document.querySelector('svg.placement rect.unit[data-unit="model.layers.2"]');
  unit.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
  var probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({
    charts: charts,
    highlighted: Array.prototype.map.call(document.querySelectorAll('.hl'),
                                          function (n) { return n.getAttribute('data-unit'); }),
    width: document.documentElement.scrollWidth
  });
  document.body.appendChild(probe);
})();
</script>"""


def chromium(tmp_path: Path, name: str, *args: str) -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make test`, which installs it")
    profile = tmp_path / f"chromium-profile-{name}"
    done = subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], (0, 0, 0, 0, 0, 0, 0)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    step = 3 if colour == 2 else 4
    stride = width * step
    raw = zlib.decompress(b"".join(chunks))
    # bytewise addition mod 256 of whole rows held as big integers (no carry between bytes)
    low, high = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")

    def add(x: int, y: int) -> int:
        return ((x & low) + (y & low)) ^ ((x ^ y) & high)

    rows: list[bytes] = []
    prior = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        method, line = raw[start], raw[start + 1 : start + 1 + stride]
        if method == 0:  # None
            out = line
        elif method == 1:  # Sub: a prefix sum per channel, by doubling
            total, shift = int.from_bytes(line, "big"), 8 * step
            while shift < 8 * stride:
                total, shift = add(total, total >> shift), shift * 2
            out = total.to_bytes(stride, "big")
        elif method == 2:  # Up
            out = add(int.from_bytes(line, "big"), int.from_bytes(prior, "big")).to_bytes(stride, "big")
        else:  # Average, Paeth
            buf = bytearray(line)
            for i in range(stride):
                a = buf[i - step] if i >= step else 0
                b = prior[i]
                if method == 3:
                    buf[i] = (buf[i] + ((a + b) >> 1)) & 255
                    continue
                c = prior[i - step] if i >= step else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                buf[i] = (buf[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            out = bytes(buf)
        rows.append(out if step == 3 else b"".join(out[i : i + 3] for i in range(0, stride, 4)))
        prior = out
    return width, height, rows


def colour_counts(rows: list[bytes], box: dict[str, float]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for line in rows[int(box["y"]) : int(box["y"] + box["h"])]:
        part = line[int(box["x"]) * 3 : int(box["x"] + box["w"]) * 3]
        for i in range(0, len(part), 3):
            pixel = part[i : i + 3]
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


def near(counts: dict[bytes, int], colour: str, tolerance: int = 24) -> int:
    """Pixels within `tolerance` of `colour` on every channel (antialiased edges included)."""
    target = bytes.fromhex(colour.removeprefix("#"))
    return sum(
        n
        for pixel, n in counts.items()
        if max(abs(p - t) for p, t in zip(pixel, target, strict=True)) <= tolerance
    )


def test_chromium_renders_every_chart(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(full_report().replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    url = report.as_uri()

    dom = chromium(tmp_path, "dom", f"--window-size={WINDOW_WIDTH},2000", "--dump-dom", url)
    assert '<svg class="chart placement" data-candidate="winner"' in dom
    assert 'data-unit="model.layers.3"' in dom and 'class="trial feasible"' in dom
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: " + dom[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    charts = {(c["chart"], c["candidate"]): c for c in probe["charts"]}
    assert set(charts) == {
        ("chart placement", "winner"),
        ("chart placement", "auto"),
        ("chart memory", "winner"),
        ("chart memory", "auto"),
        ("chart units", ""),
        ("chart history", ""),
    }
    for key, chart in charts.items():
        assert chart["w"] > 600 and chart["h"] > 40, key
        assert chart["marks"] > 0 and chart["drawn"] == chart["marks"], key  # every data mark has a size
    assert probe["width"] <= WINDOW_WIDTH  # nothing overflows sideways
    # hovering a unit outlines it in both placements and in the per-unit chart
    assert set(probe["highlighted"]) == {"model.layers.2"} and len(probe["highlighted"]) >= 4

    bottom = max(c["y"] + c["h"] for c in charts.values())
    height = int(bottom) + 20
    shot = tmp_path / "report.png"
    chromium(tmp_path, "shot", f"--window-size={WINDOW_WIDTH},{height}", f"--screenshot={shot}", url)
    width, rows_height, rows = decode_png(shot.read_bytes())
    assert (width, rows_height) == (WINDOW_WIDTH, height)
    whole = colour_counts(rows, {"x": 0, "y": 0, "w": width, "h": rows_height})
    assert len(whole) > 50 and whole.get(b"\xff\xff\xff", 0) < 0.9 * width * rows_height  # not blank

    gpu0, gpu1, cpu = "#1f77b4", "#2ca02c", "#ff7f0e"
    expected = {
        ("chart placement", "winner"): {gpu0: 2000, gpu1: 2000},
        ("chart placement", "auto"): {gpu0: 2000, gpu1: 1000, cpu: 100},  # cpu hatched: offloaded
        ("chart memory", "winner"): {"#4c78a8": 2000, "#f58518": 200, "#54a24b": 100, "#b279a2": 50},
        ("chart memory", "auto"): {"#4c78a8": 2000, "#72b7b2": 5},
        ("chart units", ""): {gpu0: 500, cpu: 500, "#4c78a8": 2000, "#54a24b": 100},
        ("chart history", ""): {gpu0: 100, "#2ca02c": 100, "#d62728": 20},
    }
    for key, colours in expected.items():
        counts = colour_counts(rows, charts[key])
        seen = {colour: near(counts, colour) for colour in colours}
        assert all(seen[c] >= least for c, least in colours.items()), (key, seen)
