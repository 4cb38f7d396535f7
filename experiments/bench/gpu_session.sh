#!/usr/bin/env bash
# One GPU lease, prepared: what issues 2 and 6 still need measured on a GPU, most important first,
# each part under its own time limit, its log and JSON under $OUT.
#
#   bash experiments/bench/gpu_session.sh layer   # at most 6.5 min (3 on an H200): host overhead, layer bench, GPU tests
#   bash experiments/bench/gpu_session.sh train   # at most 5 min: Lightning vs the bare loop, k = 1 and 8
#   bash experiments/bench/gpu_session.sh tiles   # at most 2.5 min: GPU time of the step per kernel schedule
#   bash experiments/bench/gpu_session.sh compiled  # at most 4 min: train bench, model.compile=reduce-overhead
#   bash experiments/bench/gpu_session.sh next    # at most 8 min: GPU tests, layer bench, CUDA-graph training (every model, batch 32 and 128)
#   bash experiments/bench/gpu_session.sh more    # at most 8.7 min: direct-launch host time, model.compile=reduce-overhead, k = 8 and 16
#   bash experiments/bench/gpu_session.sh split   # at most 5.7 min: GPU tests, the splits at 8x8 per kernel, layer bench
#   bash experiments/bench/gpu_session.sh warps   # at most 4 min: GPU tests, 4 warps and stats once per kernel, layer bench
#   bash experiments/bench/gpu_session.sh fused   # at most 9 min: the switches' GPU tests, host time, the fused forward and the convolution's backward in the kernels per kernel and schedule, layer bench without and with both
#
# `make gpu-check` and `make gpu-check-train` run the two parts with OUT=outputs/gpu_check.
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

# The train bench with model.compile=reduce-overhead: the step replayed from CUDA graphs.
compiled() {
    part train_compiled 240 "$PY" experiments/bench/train.py --device cuda --warmup 64 --steps 800 \
        --steps-per-execution 1,8 --models fig4_ssim shallow_ssim --batch-sizes 32 \
        --out "$OUT/train_compiled.json" data=synthetic data.num_train=50000 data.num_val=1000 \
        logger=csv model.compile=reduce-overhead
}

# GPU time of the step for each kernel schedule: position blocks, filter statistics once.
tiles() {
    part k_tile 150 "$PY" experiments/bench/k_tile.py --k-tile --block 128 32 16 --stats-once \
        --out "$OUT/k_tile.json"
}

case "${1:-layer}" in
layer)
    part host_overhead 120 "$PY" experiments/bench/host_overhead.py --out "$OUT/host_overhead.json"
    part layer_bench 150 "$PY" experiments/bench/layer.py --device cuda --repeats 8 \
        --out "$OUT/layer.json"
    # pytest-xdist, where installed, compiles the kernels of different tests in parallel (the H200
    # machine ran all 48 in 55 s with -n 8; one process ran 12 in 120 s).
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    part gpu_tests 120 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_gpu.py tests/test_triton_kernels.py
    ;;
train)
    part train_bench 300 "$PY" experiments/bench/train.py --device cuda --warmup 32 --steps 800 \
        --repeats 2 --steps-per-execution 1,8 --models fig4_plain fig4_ssim shallow_ssim \
        --out "$OUT/train.json" data=synthetic data.num_train=50000 data.num_val=1000 logger=csv
    ;;
tiles)
    tiles
    ;;
compiled)
    compiled
    ;;
next)
    # What the latest lease left open, most important first, sized so that one call fits a
    # 15-minute lease with its start: the GPU tests (the launcher's three-size grid, the position
    # block of 64), the layer bench (issue 2's wall-clock target with block 64, timed so far only
    # by k_tile's GPU time) and the train bench with model.cuda_graph=true for every model at
    # batch 32 and 128 (issue 6's rows not yet measured with the graphs).
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    part gpu_tests 90 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_gpu.py tests/test_triton_kernels.py
    part layer_bench 120 "$PY" experiments/bench/layer.py --device cuda --repeats 8 \
        --out "$OUT/layer.json"
    part train_graph 270 "$PY" experiments/bench/train.py --device cuda --warmup 32 --steps 800 \
        --repeats 2 --steps-per-execution 1,8 --batch-sizes 32 128 \
        --out "$OUT/train_graph.json" data=synthetic data.num_train=50000 \
        data.num_val=1000 logger=csv model.cuda_graph=true
    ;;
split)
    # The filter split (automatic by default since the lease of session 12): the GPU tests (the
    # split kernels compiled for real), the GPU time per kernel at 8x8 for no split and splits of
    # 2, 4 and 8 in the forward, the backward and both, then the layer bench with the defaults.
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    part gpu_tests 90 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_gpu.py tests/test_triton_kernels.py
    part k_tile_split 130 "$PY" experiments/bench/k_tile.py --k-tile --split 1 2 4 8 --kernels \
        --shapes 2 --out "$OUT/k_tile_split.json"
    part layer_bench 120 "$PY" experiments/bench/layer.py --device cuda --repeats 8 \
        --out "$OUT/layer.json"
    ;;
warps)
    # After split: the GPU tests with the forward split capped at 2, then the GPU time per kernel
    # of the defaults, of at least 4 warps per program and of the filter statistics once, at the
    # three shapes, and the layer bench.
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    part gpu_tests 80 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_gpu.py tests/test_triton_kernels.py
    part k_tile_warps 60 "$PY" experiments/bench/k_tile.py --k-tile --min-warps 4 --stats-once \
        --kernels --out "$OUT/k_tile_warps.json"
    part layer_bench 100 "$PY" experiments/bench/layer.py --device cuda --repeats 8 \
        --out "$OUT/layer.json"
    ;;
more)
    # Whatever time is left after next, most useful first: the host time with and without the
    # direct launch, CUDA graphs through torch.compile, and k = 8 and 16 again with repeats.
    part host_overhead 100 "$PY" experiments/bench/host_overhead.py --out "$OUT/host_overhead.json"
    compiled
    part train_k8_k16 180 "$PY" experiments/bench/train.py --device cuda --warmup 32 --steps 800 \
        --repeats 2 --steps-per-execution 8,16 --models fig4_plain fig4_ssim shallow_ssim \
        --out "$OUT/train_k8_k16.json" data=synthetic data.num_train=50000 data.num_val=1000 logger=csv
    ;;
fused)
    # The kernels that compute Sxy themselves (SSIMLAYER_FUSED_CONV) and the convolution's
    # backward inside the backward's last kernel (SSIMLAYER_TRITON_CONV_BACKWARD), both off by
    # default until measured, in order of what decides: the GPU tests of the two switches (their
    # compiled float64 and float32 kernels against the reference); the layer bench's wall clock
    # and peak memory without and with both (what the target measures); the host time per piece
    # (with the Python and C++ trivial-node rows and the step without cuDNN, not yet run on a
    # GPU); their GPU time per kernel at the three shapes with three more schedules of the
    # convolution's backward; then a register cap of 128, the forward's patch sums tap by tap and
    # the fused kernels with 8 warps at the two 3x3 shapes. The 8x8 shape first: a part cut short
    # by its time limit keeps the rows it wrote.
    workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
    # Only the tests of the two switches (65 of 167; the whole file took more than 80 s in the
    # lease of session 12, and the first-use checks of the layer bench compare the default kernels
    # with the PyTorch path again).
    part gpu_tests 100 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m "not slow" \
        $workers tests/test_triton_kernels.py \
        -k "fused or conv or convolution or convolves or no_cudnn or no-cudnn"
    part layer_bench 70 "$PY" experiments/bench/layer.py --device cuda --repeats 6 \
        --out "$OUT/layer.json"
    SSIMLAYER_FUSED_CONV=1 SSIMLAYER_TRITON_CONV_BACKWARD=1 part layer_bench_no_cudnn 70 \
        "$PY" experiments/bench/layer.py --device cuda --repeats 6 --out "$OUT/layer_no_cudnn.json"
    part host_overhead 90 "$PY" experiments/bench/host_overhead.py --out "$OUT/host_overhead.json"
    part k_tile_switches 150 "$PY" experiments/bench/k_tile.py --k-tile --fused-conv \
        --conv-backward --conv-schedules 32,8,2 32,16,2 64,16,1 --kernels --shapes 2 0 1 \
        --out "$OUT/k_tile_switches.json"
    part k_tile_caps 60 "$PY" experiments/bench/k_tile.py --k-tile --max-registers 128 \
        --taps-outside --fused-conv --fused-warps 8 --fused-stages 1 --shapes 2 0 \
        --out "$OUT/k_tile_caps.json"
    ;;
*)
    echo "usage: $0 layer|train|tiles|compiled|next|more|split|warps|fused" >&2
    exit 2
    ;;
esac
