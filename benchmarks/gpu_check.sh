#!/usr/bin/env bash
# The GPU check in one command: `pytest -m gpu`, then `python -m benchmarks.gpu_truth`, on a CUDA
# machine whose Python already holds torch, transformers and accelerate but not the rest of the
# tuner's stack (the image of the GPU machines this project is lent: nothing can be downloaded
# there). That rest travels as wheels in .whl, at the versions constraints.txt pins, fetched
# beforehand on a machine that reaches PyPI:
#
#   benchmarks/gpu_check.sh fetch      # here: the wheels for CPython 3.12 on x86-64, into .whl
#                                      # (TARGET_PYTHON=3.11 for another version of the GPU image)
#   benchmarks/gpu_check.sh            # on the GPU machine (with .whl beside it): both checks
#   benchmarks/gpu_check.sh dry-run    # anywhere: the same steps on the cpu, small, in a minute
#
# Everything it writes goes to $OUT (default: a new temporary folder): environment.txt,
# pytest_gpu.log, gpu_truth.log, and gpu_truth.md, which is committed as
# benchmarks/results/gpu_truth.md. Each step has a time limit (PYTEST_LIMIT, TRUTH_LIMIT, seconds)
# so that a hung step still leaves the other's figures. The exit status is 0 when both passed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# What the GPU image lacks, by the names constraints.txt pins them under.
CARRIED='optuna|sqlalchemy|alembic|mako|colorlog'
mode=${1:-check}

pins() {
    grep -iE "^(${CARRIED})==" constraints.txt
}

case $mode in
fetch)
    rm -rf .whl
    # shellcheck disable=SC2046 # one argument per pin
    exec "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "${TARGET_PYTHON:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $(pins)
    ;;
check | dry-run) ;;
*)
    echo "usage: benchmarks/gpu_check.sh [fetch | dry-run]" >&2
    exit 2
    ;;
esac

OUT=${OUT:-$(mktemp -d -t tuner-gpu-check-XXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The wheels only where the stack is missing: elsewhere (a developer's machine, with wheels fetched
# for the GPU image's Python) the installed stack is the one to check.
if ! "$PYTHON" -c 'import optuna, sqlalchemy, alembic' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d -t tuner-site-XXXX)
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl ||
        { echo "gpu_check: the wheels in .whl did not install" >&2; exit 1; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
        --format=csv 2>/dev/null || echo "nvidia-smi: not here"
    "$PYTHON" - <<'EOF'
import platform, sys
import accelerate, optuna, sqlalchemy, torch, transformers
import tuner  # the tuner itself imports with this stack
print("python", platform.python_version(), "on", platform.machine(), sys.executable)
for module in (torch, transformers, accelerate, optuna, sqlalchemy):
    print(module.__name__, module.__version__)
print("cuda", torch.version.cuda, "devices", torch.cuda.device_count())
EOF
} >"$OUT/environment.txt" 2>&1
status=$?
cat "$OUT/environment.txt"
if [[ $status != 0 ]]; then
    echo "gpu_check: the tuner's stack does not import here (see above); fetch the wheels first" >&2
    exit 1
fi

if [[ $mode == dry-run ]]; then
    truth=(--device cpu --small --rounds 1)
else
    truth=()
fi

# Every test file that holds a GPU test: collecting the whole tree would need the service's and
# PostgreSQL's packages too, which the GPU checks do not use.
mapfile -t files < <(grep -rlE 'mark\.gpu' tests --include='test_*.py' | sort)
echo "== pytest -m gpu (${#files[@]} files)"
timeout "${PYTEST_LIMIT:-240}" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${files[@]}" 2>&1 |
    tee "$OUT/pytest_gpu.log"
tests=$?

echo "== python -m benchmarks.gpu_truth ${truth[*]}"
timeout "${TRUTH_LIMIT:-420}" "$PYTHON" -m benchmarks.gpu_truth "${truth[@]}" --output "$OUT/gpu_truth.md" 2>&1 |
    tee "$OUT/gpu_truth.log"
figures=$?

echo "== pytest: exit $tests; gpu_truth: exit $figures; written to $OUT"
[[ $tests == 0 && $figures == 0 ]]
