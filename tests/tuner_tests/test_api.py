"""The public Python API, `import tuner`, on tiny real models: tuned maps load and give the unsplit
model's outputs, a repeated request is answered from the database, user maps are priced by the
same cost model, and bad arguments fail before anything is measured or stored."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import tuner
from profiler.validate import Validation
from tests.families import save_family
from tests.tuner_tests.conftest import Notes
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import Candidate
from tuner.core.domain import RunStatus

pytestmark = pytest.mark.usefixtures("one_thread")

#: A small generate workload and a short search: seconds per call on two cores.
OPTIONS: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, trials=8, random_seed=0)


def half_the_weights(folder: Path) -> dict[str, int]:
    """A cpu limit that holds half the weights, so the rest must stream from disk."""
    return {"cpu": sum(f.stat().st_size for f in folder.glob("*.safetensors")) // 2}


def logits(model: transformers.PreTrainedModel) -> torch.Tensor:
    ids = torch.arange(8).reshape(1, 8) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def db(measured_db_url: str) -> str:
    return measured_db_url


class _NoWork(Recorder):
    """Fails the test if the call profiles, plans or searches anything."""

    def phase(self, description: str) -> None:
        raise AssertionError(f"answered from the database, yet a phase started: {description}")


def test_importing_tuner_loads_no_torch_and_lists_its_api() -> None:
    code = (
        "import sys, tuner; names = set(tuner.__all__); tuner.Run; tuner.TunerError; tuner.Workload; "
        "print('torch' in sys.modules, 'sqlalchemy' in sys.modules, "
        "{'optimize', 'device_map', 'from_pretrained', 'price'} <= names)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "True"]
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        tuner.nothing_here  # type: ignore[attr-defined]  # noqa: B018


def test_device_map_loads_and_matches_the_unsplit_model_and_the_second_call_is_a_cache_hit(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    folder = weights_folder("llama")
    limits = half_the_weights(folder)
    dmap = tuner.device_map(str(folder), max_memory=limits, db=db, **OPTIONS)  # type: ignore[arg-type]

    stored = tuner.get_run("latest", db=db)
    assert stored.winner is not None and dmap == stored.winner.device_map.to_hf()
    assert "disk" in dmap.values() and all(isinstance(place, (int, str)) for place in dmap.values())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map=dmap)
    whole = transformers.AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(loaded), logits(whole))

    # The same request again: no phase starts, and in a fresh process torch is never imported.
    again = tuner.device_map(str(folder), max_memory=limits, db=db, listener=_NoWork(), **OPTIONS)  # type: ignore[arg-type]
    assert again == dmap
    code = (
        "import json, sys, tuner; "
        f"print(json.dumps(tuner.device_map({str(folder)!r}, max_memory={limits!r}, db={db!r}, "
        f"**{OPTIONS!r}))); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    printed_map, torch_loaded = result.stdout.strip().splitlines()
    assert json.loads(printed_map) == {k: v for k, v in dmap.items()} and torch_loaded == "False"
    assert len(tuner.list_runs(db=db)) == 1


def test_a_folder_named_relative_or_as_a_path_object_is_one_model_read_from_anywhere(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save_family("llama", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    first = tuner.optimize("./m", db=db, **OPTIONS)  # type: ignore[arg-type]
    assert first.model_name == str(tmp_path / "m") and first.winner is not None
    assert tuner.best_run("m/", hardware=tuner.THIS_MACHINE, seq=8, new_tokens=2, db=db) == first
    # a path object, as transformers takes one; and from another working directory
    monkeypatch.chdir("/")
    assert (
        tuner.device_map(tmp_path / "m", db=db, listener=_NoWork(), **OPTIONS)
        == first.winner.device_map.to_hf()
    )  # type: ignore[arg-type]
    code, out, err = run(["validate", str(first.id), "--repeats", "1", "--json", "--db", db], capsys)
    assert code == 0 and json.loads(out)["ok"], err


def test_the_cache_key_follows_the_request(weights_folder: Callable[[str], Path], db: str) -> None:
    """A different limit, or force, searches again; `device_map` after `optimize` is a hit."""
    folder = str(weights_folder("llama"))
    first = tuned(folder, db, **OPTIONS)
    assert not first.reused
    assert (
        tuner.device_map(folder, db=db, listener=_NoWork(), **OPTIONS) == first.run.winner.device_map.to_hf()
    )  # type: ignore[union-attr, arg-type]
    other = tuned(folder, db, max_memory={"cpu": "1GiB"}, **OPTIONS)
    assert other.run.id != first.run.id
    forced = tuned(folder, db, force=True, **OPTIONS)
    assert forced.run.id not in {first.run.id, other.run.id} and forced.searched > 0


def test_from_pretrained_loads_the_tuned_map_in_the_tuned_dtype(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    folder = str(weights_folder("gpt2"))
    limits = half_the_weights(Path(folder))
    model = tuner.from_pretrained(folder, max_memory=limits, db=db, output_hidden_states=True, **OPTIONS)  # type: ignore[arg-type]
    stored = tuner.get_run("latest", db=db)
    assert stored.winner is not None
    assert type(model).__name__ == "GPT2LMHeadModel" and model.dtype == torch.float32
    assert dict(model.hf_device_map) == stored.winner.device_map.to_hf()
    assert model.config.output_hidden_states  # a from_pretrained keyword passed through
    whole = transformers.AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(model), logits(whole))
    with pytest.raises(tuner.ConstraintError, match="leave device_map out"):
        tuner.from_pretrained(folder, device_map="auto", db=db)
    with pytest.raises(tuner.ConstraintError, match="give dtype .*, not torch_dtype"):
        tuner.from_pretrained(folder, torch_dtype="float16", db=db)


def test_price_of_accelerates_auto_map_equals_the_auto_baseline_optimize_stored(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    folder = str(weights_folder("llama"))
    limits = half_the_weights(Path(folder))
    stored = tuner.optimize(folder, max_memory=limits, db=db, **OPTIONS)  # type: ignore[arg-type]
    auto = stored.baseline("auto")
    workload = {k: OPTIONS[k] for k in ("seq", "new_tokens", "repeats")}
    assert (
        tuner.price(folder, auto.device_map.to_hf(), max_memory=limits, db=db, **workload) == auto.prediction
    )  # type: ignore[arg-type]

    # Module prefixes are maps too: the whole decoder on the cpu, the head on disk.
    coarse = tuner.price(folder, {"model": "cpu", "lm_head": "disk"}, max_memory=limits, db=db, **workload)  # type: ignore[arg-type]
    per_unit = dict.fromkeys(stored.winner.device_map.to_hf(), "cpu") | {"lm_head": "disk"}  # type: ignore[union-attr]
    assert coarse == tuner.price(folder, per_unit, max_memory=limits, db=db, **workload)  # type: ignore[arg-type]

    compared = tuner.compare(folder, auto.device_map.to_hf(), max_memory=limits, db=db, **workload)  # type: ignore[arg-type]
    assert compared.prediction == auto.prediction
    assert {c.name for c in compared.strategies} >= {"auto", "balanced", "sequential"}
    assert compared.optimum is not None and compared.optimum.prediction == stored.baseline("exact").prediction


def test_a_run_that_completed_without_a_winner_does_not_answer_the_request_again(
    config_folder: Callable[[str], Path], db: str
) -> None:
    """``--trials 0 --no-seed`` completes a run with no map: the same request searches again
    rather than answer "run N has no map that fits" for ever."""
    folder = str(config_folder("llama"))
    options = dict(seq=8, new_tokens=2, repeats=1, db=db)
    empty = tuner.optimize(folder, trials=0, seed_search=False, **options)  # type: ignore[arg-type]
    assert empty.status is tuner.RunStatus.COMPLETE and empty.winner is None
    again = tuner.optimize(folder, trials=4, **options)  # type: ignore[arg-type]
    assert again.id != empty.id and again.winner is not None
    assert tuner.device_map(folder, **options) == again.winner.device_map.to_hf()  # type: ignore[arg-type]


def test_a_strategy_transformers_cannot_plan_is_left_out_with_one_note_saying_why(
    config_folder: Callable[[str], Path], db: str
) -> None:
    """Under this cap transformers' planner fails on BERT's tied masked-LM head (IndexError, as
    ``from_pretrained(device_map="auto")`` does): the strategies it fails are not priced, and one
    note names them all and the failure."""

    folder = str(config_folder("bert"))
    listener = Notes()
    with torch.device("meta"):
        model = transformers.AutoModelForMaskedLM.from_config(transformers.AutoConfig.from_pretrained(folder))
    limits = {"cpu": int(0.54 * 4 * sum(p.numel() for p in model.parameters()))}  # over half the fp32 weights
    compared = tuner.compare(
        folder, {"": "disk"}, max_memory=limits, seq=8, new_tokens=0, repeats=1, db=db, listener=listener
    )
    left_out = [note for note in listener.notes if "left out" in note]
    assert len(left_out) == 1 and "transformers' planner failed (IndexError" in left_out[0]
    assert "'auto'" in left_out[0] and "auto" not in {c.name for c in compared.strategies}


@pytest.mark.parametrize(
    ("family_folder", "options", "error", "message"),
    [
        ("config", {}, tuner.ModelSourceError, "holds no weights"),
        ("weights", {"max_memroy": {"cpu": 10**6}}, TypeError, "'max_memroy'; did you mean 'max_memory'"),
        ("weights", {"new_token": 4}, TypeError, "'new_token'; did you mean 'new_tokens'"),
        # weights quantized as they load: the plan would size the unquantized ones
        (
            "weights",
            {"quantization_config": transformers.BitsAndBytesConfig(load_in_8bit=True)},
            tuner.ConstraintError,
            "a quantization_config given here would load weights other than the ones planned for",
        ),
    ],
)
def test_from_pretrained_refuses_what_it_could_not_load_before_tuning_anything(
    family_folder: str,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
    config_folder: Callable[[str], Path],
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """A folder without weights, or an option of the tuner misspelled (which transformers would be
    handed and fail on), is refused before a run is tuned and stored for nothing."""
    folder = str((config_folder if family_folder == "config" else weights_folder)("llama"))
    db_file = tmp_path / "tuner.db"
    with pytest.raises(error, match=re.escape(message)):
        tuner.from_pretrained(folder, db=f"sqlite:///{db_file}", **options)
    assert not db_file.exists()


def test_a_keyword_close_to_a_tuner_option_that_the_models_config_has_is_the_models(
    weights_folder: Callable[[str], Path], tmp_path: Path, measured_db_url: str
) -> None:
    """XLNet's ``n_token`` or SeamlessM4T's ``max_new_tokens`` read like misspelt tuner options
    (``new_tokens``): one that names an attribute of the model's config goes to transformers."""
    folder = tmp_path / "llama"
    shutil.copytree(weights_folder("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "new_token": 1}))
    model = tuner.from_pretrained(folder, new_token=2, db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert model.config.new_token == 2  # transformers' config override, as from_pretrained takes it


def test_from_pretrained_checks_a_resumed_runs_hardware_before_tuning(
    config_folder: Callable[[str], Path], weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    planned = tuner.optimize(
        config_folder("llama"), hardware="8xH100-80GB-nvlink", seq=8, new_tokens=2, trials=0, db=db
    )
    listener = _NoWork()
    with pytest.raises(tuner.ConstraintError, match="from_pretrained loads the model on this machine, which"):
        tuner.from_pretrained(weights_folder("llama"), resume=planned.id, db=db, listener=listener)


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"model": "cpu"}, "places no module that contains 'lm_head'"),
        ({"": "cpu", "model.layer.1": "disk"}, "did you mean model.layers.1"),
        ({"": "cpu", "model.layers.1.mlp": "disk"}, "inside unit 'model.layers.1'"),
        ({"": "gpu"}, "is not a device"),
        ({"": 7}, "no device 7"),
    ],
)
def test_price_checks_a_hand_written_map_before_profiling(
    config_folder: Callable[[str], Path], tmp_path: Path, device_map: dict[str, object], message: str
) -> None:
    db_file = tmp_path / "tuner.db"
    with pytest.raises(tuner.ConstraintError, match="device_map") as error:
        tuner.price(str(config_folder("llama")), device_map, db=f"sqlite:///{db_file}")  # type: ignore[arg-type]
    assert message in str(error.value)
    assert not db_file.exists()


def test_a_torch_dtype_is_taken_as_from_pretrained_takes_it(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = str(config_folder("llama"))
    options = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, db=f"sqlite:///{tmp_path / 'tuner.db'}")
    by_torch = tuner.price(folder, {"": 0}, dtype=torch.float16, **options)  # type: ignore[arg-type]
    assert by_torch == tuner.price(folder, {"": 0}, dtype="float16", **options)  # type: ignore[arg-type]
    assert by_torch != tuner.price(folder, {"": 0}, dtype="float32", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(max_memory={"cpu": "-5GiB"}), "max_memory['cpu']: a size must not be negative"),
        (dict(max_memory={"gpu": "5GiB"}), "max_memory['gpu']: 'gpu' is not a device"),
        (dict(max_memory={3: "5GiB"}), "max_memory names device 3"),
        (
            dict(max_memory={3: "5GiB"}),
            "; for devices this machine lacks, name a spec (--hardware, or hardware= in Python)",
        ),
        (dict(max_memory="cpu=5GiB"), "max_memory must map devices to sizes"),
        (dict(pins={"no.such.unit": "cpu"}), "pins: the model has no unit or module 'no.such.unit'"),
        (dict(pins={"lm_head": "disk"}, exclude=["disk"]), "device disk is excluded"),
        (dict(exclude=["tpu"]), "exclude: 'tpu' is not a device"),
        (dict(exclude=["cpu"]), "exclude leaves no device that computes (cpu excluded)"),
        (dict(candidates=[{"model": "cpu"}]), "candidates[0]: the device map places no module"),
        (dict(candidates={"": "cpu"}), "candidates takes a list of device maps"),
        (dict(batch=0), "batch must be a whole number of at least 1"),
        (dict(dtype=torch.int8), "dtype: unknown 'int8'; choose one of"),
        (dict(dtype=16), "dtype: unknown '16'; choose one of"),
        (dict(trials=-1), "trials must be a whole number of at least 0"),
        (dict(batch=2**31), f"batch must be at most 2147483647 (got {2**31})"),
        (dict(random_seed=-1), "random_seed must be a whole number from 0 to 4294967295 (got -1)"),
        (dict(random_seed=2**32), "random_seed must be a whole number from 0 to 4294967295 (got 4294967296)"),
        (dict(timeout=float("nan")), "timeout must be a number of seconds, 0 or more (got nan)"),
        (dict(force=True, resume=3), "give force or resume, not both"),
        (dict(timeout="5"), "timeout must be a number of seconds, 0 or more (got '5')"),
        (dict(hardware=3), "hardware must be a spec file or a shipped spec's name (got 3)"),
        (dict(resume="x"), "resume must be a run id or 'latest' (got 'x')"),
        (dict(max_memory={"cpu": "1000TiB"}), "max_memory['cpu'] is 1000.0 TiB, more than device cpu has"),
        # "no" is truthy: read as a yes it would run the model's own code
        (dict(trust_remote_code="no"), "trust_remote_code must be True or False (got 'no')"),
        (dict(calibrate=1), "calibrate must be True or False (got 1)"),
        (dict(force="no"), "force must be True or False (got 'no')"),
        (dict(seed_search=None), "seed_search must be True or False (got None)"),
    ],
)
def test_bad_arguments_raise_a_tuner_error_naming_the_parameter_before_anything_is_stored(
    config_folder: Callable[[str], Path], tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    db_file = tmp_path / "tuner.db"
    listener = _NoWork()
    with pytest.raises(tuner.TunerError) as error:
        tuner.optimize(str(config_folder("llama")), db=f"sqlite:///{db_file}", listener=listener, **arguments)  # type: ignore[arg-type]
    assert message in str(error.value)
    assert not db_file.exists()  # not even created


def test_a_map_for_gpus_this_machine_lacks_is_neither_tuned_to_load_here_nor_validated_here(
    weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert gpus < 8  # the spec's eight GPUs: absent here
    folder = str(weights_folder("llama"))
    db_file = tmp_path / "tuner.db"
    db = f"sqlite:///{db_file}"
    with pytest.raises(tuner.ConstraintError, match="from_pretrained loads the model on this machine, which"):
        tuner.from_pretrained(folder, hardware="8xH100-80GB-nvlink", db=db)
    assert not db_file.exists()  # refused before any tuning
    on_a_gpu = {"": gpus}
    with pytest.raises(tuner.ConstraintError, match=f"this machine has no GPU {gpus}: the map names them"):
        tuner.validate(folder, device_map=on_a_gpu, db=db)


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"": "cpu", "model.layers.0.mlp": "disk"}, "'model.layers.0.mlp' is inside unit 'model.layers.0'"),
        ({"model.embed_tokens": "cpu", "model.layers": "cpu"}, "places no module that contains 'model.norm'"),
        ({"": "cpu", "model.decoder": "disk"}, "'model.decoder' is no module of the model"),
        # accelerate's hook on '' moves every tensor, the head's (on meta, offloaded) included
        ({"": "cpu", "lm_head": "disk"}, "'lm_head' on disk inside the whole model ('') on cpu: from_pretra"),
        ({"model": "disk", "model.layers.0": "cpu", "lm_head": "cpu"}, "'model.layers.0' on cpu inside"),
    ],
)
def test_validate_checks_a_map_as_price_does_before_loading_it(
    weights_folder: Callable[[str], Path], tmp_path: Path, device_map: dict[str, str], message: str
) -> None:
    folder, db = str(weights_folder("llama")), f"sqlite:///{tmp_path / 'tuner.db'}"
    with pytest.raises(tuner.ConstraintError, match=re.escape(message)) as priced:
        tuner.price(folder, device_map, seq=8, db=db)
    with pytest.raises(tuner.ConstraintError, match=re.escape(message)) as validated:
        tuner.validate(folder, device_map=device_map, seq=8, db=db)
    assert str(validated.value) == str(priced.value)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"seq": 0}, tuner.WorkloadError, "seq must be a whole number of at least 1 (got 0)"),
        ({"batch": 0}, tuner.WorkloadError, "batch must be a whole number of at least 1 (got 0)"),
        ({"seq": "8"}, tuner.WorkloadError, "seq must be a whole number of at least 1 (got '8')"),
        ({"new_tokens": -1}, tuner.WorkloadError, "new_tokens must be a whole number of at least 0"),
        ({"dtype": "fp16"}, tuner.WorkloadError, "dtype: unknown 'fp16'; choose one of auto, "),
        ({"repeats": 0}, tuner.ConstraintError, "repeats must be a whole number of at least 1 (got 0)"),
        ({"model": None}, tuner.ConstraintError, "model must be a folder or a hub id (got None)"),
    ],
)
def test_validate_refuses_a_workload_it_cannot_run_as_optimize_does_and_never_takes_zero_for_a_default(
    options: dict[str, Any],
    error: type[Exception],
    message: str,
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    arguments: dict[str, Any] = {"model": str(weights_folder("llama")), "device_map": {"": "cpu"}, **options}
    db_file = tmp_path / "tuner.db"
    with pytest.raises(error, match=re.escape(message)):
        tuner.validate(db=f"sqlite:///{db_file}", **arguments)
    assert not db_file.exists()


@pytest.mark.parametrize(
    ("device_map", "loads"),
    [
        # with a GPU as the main device the cpu is offloaded too: the outer hook moves meta weights
        ({"model": "cpu", "model.layers.1": "disk", "lm_head": 0}, False),
        ({"": 0, "lm_head": "cpu"}, False),  # the GPU would hold the head while loading
        ({"": 0, "lm_head": 1}, True),  # neither offloaded: the inner hook moves the head on
        ({"model": "disk", "model.layers.1": "disk", "lm_head": 0}, True),  # one place: no nesting
    ],
)
def test_a_map_nesting_an_offloaded_module_is_refused_on_gpus_too(
    config_folder: Callable[[str], Path], tmp_path: Path, device_map: dict[str, int | str], loads: bool
) -> None:
    folder, db = str(config_folder("llama")), f"sqlite:///{tmp_path / 'tuner.db'}"
    if loads:
        assert tuner.price(folder, device_map, hardware="2xA100-80GB-nvlink", seq=8, db=db).feasible
        return
    with pytest.raises(tuner.ConstraintError, match="from_pretrained does not load such a map as written"):
        tuner.price(folder, device_map, hardware="2xA100-80GB-nvlink", seq=8, db=db)


def test_a_run_planned_for_a_spec_is_timed_here_but_neither_compared_nor_stored(
    weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    folder, db = str(weights_folder("llama")), f"sqlite:///{tmp_path / 'tuner.db'}"
    spec = "2xA100-80GB-nvlink"
    planned = tuner.optimize(folder, hardware=spec, exclude=["0", "1"], seq=8, new_tokens=2, trials=3, db=db)
    assert planned.winner is not None and set(planned.winner.device_map.devices) == {"cpu"}  # loads here
    outcome = tuner.validate(folder, run=planned.id, repeats=1, db=db)
    assert outcome.ok and outcome.validation.latency_s is not None
    assert (outcome.planned_elsewhere, outcome.predicted_s, outcome.ratios) == (spec, None, None)
    assert tuner.get_run(planned.id, db=db) == planned  # no timing of this machine on a plan for an A100


def test_a_validation_that_measured_nothing_neither_fits_nor_fails_to() -> None:
    failed = tuner.ValidationOutcome(Validation(ok=False, reason="load failed: no"), limits={"cpu": 5})
    assert failed.fits is None and not failed.ok
    ran = Validation(ok=True, peak_memory={"cpu": 10})
    assert tuner.ValidationOutcome(ran, limits={"cpu": 5}).fits is False
    assert tuner.ValidationOutcome(ran, limits={"cpu": 10}).fits is True


def test_an_unknown_keyword_is_a_type_error_as_python_makes_it(config_folder: Callable[[str], Path]) -> None:
    with pytest.raises(TypeError, match="device_map\\(\\) got an unexpected keyword argument 'max_mem'"):
        tuner.device_map(str(config_folder("llama")), max_mem={"cpu": "1GiB"})  # type: ignore[call-arg]


def test_a_candidate_map_is_priced_and_the_winner_is_never_worse(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    folder = str(weights_folder("llama"))
    limits = half_the_weights(Path(folder))
    mine = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "lm_head": "disk"}
    mine |= {"model.rotary_emb": "cpu"}  # its buffer needs a place
    stored = tuner.optimize(folder, max_memory=limits, candidates=[mine], db=db, seed_search=True, **OPTIONS)  # type: ignore[arg-type]
    candidate = stored.baseline("candidate 1")
    assert candidate.prediction == tuner.price(folder, mine, max_memory=limits, db=db, seq=8, new_tokens=2)  # type: ignore[arg-type]
    assert stored.winner is not None and stored.winner.prediction is not None
    assert candidate.prediction is not None and candidate.prediction.feasible
    assert stored.winner.prediction.latency_s <= candidate.prediction.latency_s * (1 + 1e-9)
    # Your map is part of the question: without it, another run answers.
    assert tuner.optimize(folder, max_memory=limits, db=db, **OPTIONS).id != stored.id  # type: ignore[arg-type]


def test_price_command_shows_your_map_beside_accelerates_and_the_optimum(
    weights_folder: Callable[[str], Path], tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = str(weights_folder("llama"))
    map_file = tmp_path / "mine.json"
    map_file.write_text(json.dumps({"model": "cpu", "lm_head": "disk"}))
    args = ["price", str(map_file), folder, "--seq", "8", "--new-tokens", "2", "--repeats", "1", "--db", db]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "yours" in out and "auto" in out and "exact" in out and "vs best" in out
    code, out, err = run([*args, "--json"], capsys)
    document = json.loads(out)
    assert document["yours"]["name"] == "yours"
    assert {c["name"] for c in document["others"]} >= {"auto", "balanced", "exact"}

    map_file.write_text('{"": "cpu", "": "disk"}')
    code, _, err = run(args, capsys)
    assert code != 0 and "appears twice" in err and len(err.strip().splitlines()) == 1


def test_optimize_command_takes_a_candidate_file(
    weights_folder: Callable[[str], Path], tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = str(weights_folder("llama"))
    map_file = tmp_path / "mine.json"
    map_file.write_text(json.dumps({"device_map": {"": "cpu"}, "max_memory": {"cpu": 1 << 30}}))
    args = ["optimize", folder, "--seq", "8", "--new-tokens", "2", "--repeats", "1", "--trials", "4"]
    code, out, err = run([*args, "--candidate", str(map_file), "--json", "--db", db], capsys)
    assert code == 0, err
    names = {b["name"] for b in json.loads(out)["baselines"]}
    assert "candidate 1" in names


def test_resuming_with_other_settings_names_what_changed(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    model = str(config_folder("llama"))
    spec = dict(hardware="1xT4-16GB", new_tokens=2, trials=3, db=db)
    first = tuner.optimize(model, seq=8, **spec)  # type: ignore[arg-type]
    with pytest.raises(tuner.ConstraintError) as refused:
        tuner.optimize(model, seq=16, max_memory={"0": "1GiB"}, resume=first.id, **spec)  # type: ignore[arg-type]
    dtype = first.workload.dtype
    assert str(refused.value) == (
        f"run {first.id} was tuned with other settings (workload batch 1, seq 8, 2 new tokens, {dtype} "
        f"(now batch 1, seq 16, 2 new tokens, {dtype}), max_memory); give the same arguments to resume it"
    )


class _StopAfterATrial(Recorder):
    """Ctrl-C once the search has a trial."""

    def trial_done(self, candidate: Candidate) -> None:
        raise KeyboardInterrupt


def test_a_cancelled_run_is_not_resumed(config_folder: Callable[[str], Path], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    model = str(config_folder("llama"))
    request: dict[str, Any] = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, trials=3, db=db)
    with pytest.raises(tuner.RunInterrupted) as stopped:
        tuner.optimize(model, listener=_StopAfterATrial(), **request)
    cancelled = tuner.cancel_run(stopped.value.run_id, db=db)
    with pytest.raises(tuner.ConstraintError) as refused:
        tuner.optimize(model, resume=cancelled.id, **request)
    assert str(refused.value) == (
        f"run {cancelled.id} failed ({cancelled.error}): a failed run is not resumed; optimize without "
        "resume starts a new run"
    )
    assert cancelled.error.startswith("cancelled after ")
    assert tuner.get_run(cancelled.id, db=db) == cancelled
    assert tuner.optimize(model, **request).id != cancelled.id


class _AnotherWorkerStoresThenStop(Recorder):
    """At this process's first trial, another worker of the run stores `extra` trials of its own,
    then Ctrl-C stops this one."""

    def __init__(self, db: str, run_id: int, extra: int) -> None:
        super().__init__()
        self.db, self.run_id, self.extra = db, run_id, extra

    def trial_done(self, candidate: Candidate) -> None:
        from storage import Store

        with Store(self.db) as store:
            base = store.get_run(self.run_id).baselines[0]
            theirs = [
                dataclasses.replace(base, name=f"trial {n}", trial=n) for n in range(1000, 1000 + self.extra)
            ]
            store.add_candidates(self.run_id, theirs)
        raise KeyboardInterrupt


def test_a_worker_that_joined_a_run_and_is_stopped_counts_the_other_workers_trials(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    from storage import Store

    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    model = str(config_folder("llama"))
    request: dict[str, Any] = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, trials=50, db=db)
    with pytest.raises(tuner.RunInterrupted) as first:
        tuner.optimize(model, listener=_StopAfterATrial(), **request)
    run_id = first.value.run_id
    assert run_id is not None
    with Store(db) as store:
        store.renew_lease(run_id)  # its first worker is searching it still
        assert store.get_run(run_id).status is RunStatus.RUNNING
    with pytest.raises(tuner.RunInterrupted) as joiner:
        tuner.optimize(model, resume=run_id, listener=_AnotherWorkerStoresThenStop(db, run_id, 5), **request)
    stored = tuner.get_run(run_id, db=db).trials
    # its own trial, the first worker's, and the 5 the other stored meanwhile
    assert stored >= first.value.trials + 1 + 5
    assert joiner.value.trials == stored


def test_a_hand_written_map_that_places_tied_units_apart_is_refused(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    """GPT-2's head shares the input embedding's weight: one tensor, in one place."""
    folder = str(config_folder("gpt2"))
    workload: dict[str, Any] = dict(seq=8, new_tokens=2, repeats=1, db=measured_db_url)
    together = {"transformer.wte": "disk", "transformer.wpe": "cpu", "transformer.h": "cpu"}
    together |= {"transformer.ln_f": "cpu", "lm_head": "disk"}
    assert tuner.price(folder, together, **workload).latency_s > 0
    apart = together | {"lm_head": "cpu"}
    message = (
        "device_map: 'lm_head' on cpu, 'transformer.wte' on disk share a weight (tied), which lives "
        "in one place: put them on one device"
    )
    with pytest.raises(tuner.ConstraintError) as refused:
        tuner.price(folder, apart, **workload)
    assert str(refused.value) == message
    with pytest.raises(tuner.ConstraintError, match=r"^candidates\[0\]: 'lm_head' on cpu, 'transformer.wte'"):
        tuner.optimize(folder, candidates=[apart], trials=1, **workload)


def test_a_map_priced_beside_the_others_says_which_of_the_model_s_own_pins_it_breaks(
    tmp_path: Path, measured_db_url: str
) -> None:
    """Whisper's ``generate`` reads the device of its first weight: offloaded, it is on ``meta``
    and generate fails, so optimize labels such a candidate; price does too."""
    from profiler.model import build_meta_model
    from profiler.model import trace_graph
    from profiler.source import resolve_source

    folder = str(save_family("whisper", tmp_path / "whisper", weights=False))
    options: dict[str, Any] = dict(new_tokens=2, repeats=1, db=measured_db_url)
    units = trace_graph(
        build_meta_model(resolve_source(folder), "float32"), tuner.Workload(new_tokens=2)
    ).unit_names
    on_cpu = dict.fromkeys(units, "cpu")
    assert tuner.compare(folder, on_cpu, **options).candidate.breaks == ""
    first_on_disk = on_cpu | {"model.encoder.conv1": "disk"}
    compared = tuner.compare(folder, first_on_disk, **options)
    assert compared.candidate.breaks == "the model's pin model.encoder.conv1=cpu"


def test_a_hand_written_map_may_leave_out_a_unit_without_tensors_as_from_pretrained_does(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    """GPT-2's ``transformer.drop`` (a dropout) holds nothing to place: it runs where its inputs
    are, with the unit before it, and a map that leaves it out prices as one that puts it there."""
    folder, db = str(config_folder("gpt2")), f"sqlite:///{tmp_path / 'tuner.db'}"
    workload: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, db=db)
    left_out = {"transformer.wte": "cpu", "transformer.wpe": "disk", "transformer.h": "cpu"}
    left_out |= {"transformer.ln_f": "cpu", "lm_head": "cpu"}
    placed = left_out | {"transformer.drop": "disk"}  # after transformer.wpe
    assert tuner.price(folder, left_out, **workload) == tuner.price(folder, placed, **workload)  # type: ignore[arg-type]
    with pytest.raises(tuner.ConstraintError, match="'transformer.ln_f': every unit that holds a weight"):
        tuner.price(folder, {k: v for k, v in left_out.items() if k != "transformer.ln_f"}, **workload)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("family", "takes", "inputs"),
    [("vit", "images of 3 x 32 x 32", "vision"), ("whisper", "speech features of 80 x 3000", "speech")],
)
def test_a_seq_asked_of_a_model_that_takes_no_text_is_left_at_the_default_and_said(
    family: str, takes: str, inputs: str, tmp_path: Path
) -> None:
    folder = str(save_family(family, tmp_path / family, weights=False))
    options = dict(hardware="1xT4-16GB", new_tokens=0, trials=2, db=f"sqlite:///{tmp_path / 'tuner.db'}")
    asked = Notes()
    first = tuner.optimize(folder, seq=512, listener=asked, **options)  # type: ignore[arg-type]
    assert first.workload.seq == 128 and first.inputs == inputs  # stored: the run as read back
    name = {"vit": "ViTForImageClassification", "whisper": "WhisperForConditionalGeneration"}[family]
    assert asked.notes[0] == (
        f"seq 512 does not apply to {name}, which takes {takes}, not text: it is kept under seq 128, "
        "as every workload of it"
    )
    again = Notes()
    second = tuner.optimize(folder, listener=again, **options)  # type: ignore[arg-type]
    assert second.id == first.id and again.reused and again.notes == []


def test_a_run_tuned_for_another_folder_of_the_same_model_answers_and_says_so(tmp_path: Path) -> None:
    first = str(save_family("vit", tmp_path / "vit", weights=False))
    copy = str(save_family("vit", tmp_path / "copy", weights=False))
    options = dict(hardware="1xT4-16GB", new_tokens=0, trials=2, db=f"sqlite:///{tmp_path / 'tuner.db'}")
    tuned = tuner.optimize(first, **options)  # type: ignore[arg-type]
    asked = Notes()
    again = tuner.optimize(copy, listener=asked, **options)  # type: ignore[arg-type]
    assert again.id == tuned.id and asked.reused
    assert asked.notes == [
        f"run {tuned.id} answers: it was tuned for {first}, whose config and weights are {copy}'s; "
        f"tuner validate {tuned.id} {copy} loads its map from {copy}"
    ]


def test_what_is_no_hardware_profile_or_listener_is_refused_by_name(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    with pytest.raises(TypeError, match="write_spec takes a HardwareProfile .*, not dict"):
        tuner.write_spec({"devices": []}, spec)  # type: ignore[arg-type]
    assert not spec.exists()
    db_file = tmp_path / "tuner.db"
    with pytest.raises(TypeError, match="listener must be an OptimizeListener"):
        tuner.optimize(str(config_folder("llama")), listener=print, db=f"sqlite:///{db_file}")  # type: ignore[typeddict-item]
    assert not db_file.exists()
    # read_spec's answer is not a spec's name: one line says what to pass instead
    hardware = tuner.read_spec("2xA100-80GB-nvlink")
    with pytest.raises(tuner.TunerError) as refused:
        tuner.compare(str(config_folder("llama")), {"": 0}, hardware=hardware, db=f"sqlite:///{db_file}")  # type: ignore[arg-type]
    assert str(refused.value) == (
        "hardware takes a spec file's path or a shipped spec's name, not a HardwareProfile: "
        "save it with tuner.write_spec(hardware, path) and pass the path"
    )
    with pytest.raises(tuner.TunerError, match=r"shipped spec's name \(got \[\[\[.{40,}\.\.\.\)$"):
        tuner.price(str(config_folder("llama")), {"": 0}, hardware=[[[1] * 100]], db=f"sqlite:///{db_file}")  # type: ignore[arg-type]
    assert not db_file.exists()


def test_best_run_answers_for_a_spec_file_as_it_reads_now(
    config_folder: Callable[[str], Path], db: str, tmp_path: Path
) -> None:
    """A spec file edited to another GPU memory and back: the run tuned for its present contents
    answers, not the newest run of its name (a map for a GPU it no longer describes)."""
    folder = str(config_folder("llama"))
    spec = tmp_path / "box.json"
    shipped = json.loads((Path(__file__).parents[2] / "profiler" / "specs" / "1xA10G-24GB.json").read_text())

    def tuned_for(gpu_memory: str) -> tuner.Run:
        for device in shipped["devices"]:
            if device["key"] == "0":
                device["memory"] = gpu_memory
        spec.write_text(json.dumps(shipped))
        return tuner.optimize(folder, hardware=str(spec), dtype="float32", db=db, **OPTIONS)  # type: ignore[arg-type]

    small, large = tuned_for("8GiB"), tuned_for("16GiB")
    assert small.hardware_fingerprint != large.hardware_fingerprint
    asked = dict(hardware=str(spec), dtype="float32", seq=8, new_tokens=2, db=db)
    assert tuner.best_run(folder, **asked) == large  # type: ignore[arg-type]
    tuned_for("8GiB")  # the first run's contents again: answered from the database
    assert tuner.best_run(folder, **asked) == small  # type: ignore[arg-type]
    spec.unlink()  # a spec only the workers can read: the newest run of its name
    assert tuner.best_run(folder, **asked) == large  # type: ignore[arg-type]


def test_a_spec_without_speeds_for_the_dtype_planned_is_refused_naming_the_file(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    shipped = json.loads((Path(__file__).parents[2] / "profiler" / "specs" / "1xA10G-24GB.json").read_text())
    (gpu,) = (device for device in shipped["devices"] if device["key"] == "0")
    gpu["peak_flops"] = {"float32": 31.2e12}
    spec = tmp_path / "box.json"
    spec.write_text(json.dumps(shipped))
    db_file = tmp_path / "tuner.db"
    with pytest.raises(tuner.TunerError) as refused:
        tuner.optimize(
            str(config_folder("llama")), hardware=str(spec), dtype="bfloat16", db=f"sqlite:///{db_file}"
        )
    assert str(refused.value) == (
        f"spec {spec}: device '0' ({gpu['name']}) gives no peak_flops for bfloat16, the dtype planned "
        "(it gives: float32); add it, or plan another --dtype"
    )
    assert not db_file.exists()


def test_from_pretrained_checks_trust_remote_code_before_reading_the_config(
    weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(tuner.TunerError, match=r"^trust_remote_code must be True or False \(got 'false'\)$"):
        tuner.from_pretrained(
            str(weights_folder("llama")), trust_remote_code="false", db=f"sqlite:///{tmp_path / 'x.db'}"
        )
    assert not (tmp_path / "x.db").exists()
