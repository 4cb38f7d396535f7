#!/usr/bin/env bash
# One GPU lease, prepared: what the layer and the pipeline need measured on a GPU, each part under
# its own time limit, its log and JSON under $OUT.
#
#   bash experiments/bench/gpu_session.sh layer     # at most 4.5 min: layer bench, GPU tests
#   bash experiments/bench/gpu_session.sh train     # at most 5 min: Lightning vs the bare loop, k = 1 and 8
#
# `make gpu-check` and `make gpu-check-train` run the first two with OUT=outputs/gpu_check.
# On a lent machine without this project installed: its python3 holds torch, Triton and Lightning;
# hydra-core, omegaconf and antlr4 travel as wheels in .whl/ (carry [".whl"]) and are installed
# into /tmp/site; W&B is not there, so the train bench logs to CSV only (`logger=csv`, as its W&B
# logging happens at epoch ends only, this changes no per-step work).
set -u
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-}  # the package from this checkout, installed or not

{
    nvidia-smi -L
    "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"
} >"$OUT/device.txt" 2>&1

# part NAME SECONDS COMMAND...: run it with a time limit, log to $OUT/NAME.log, show the log's end.
part() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "exit status $?" >>"$OUT/$name.log"
    tail -n 30 "$OUT/$name.log"
}

case "${1:-layer}" in
layer)
    part layer_bench 150 "$PY" experiments/bench/layer.py --device cuda --repeats 8 \
        --out "$OUT/layer.json"
    # pytest-xdist, where installed, compiles the kernels of different tests in parallel (an H200
    # machine ran 48 tests in 55 s with -n 8; one process ran 12 in 120 s).
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    part gpu_tests 120 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_gpu.py tests/test_triton_kernels.py
    ;;
train)
    part train_bench 300 "$PY" experiments/bench/train.py --device cuda --warmup 32 --steps 800 \
        --repeats 2 --steps-per-execution 1,8 --models fig4_plain fig4_ssim shallow_ssim \
        --out "$OUT/train.json" data=synthetic data.num_train=50000 data.num_val=1000 logger=csv
    ;;
*)
    echo "usage: $0 layer|train" >&2
    exit 2
    ;;
esac
