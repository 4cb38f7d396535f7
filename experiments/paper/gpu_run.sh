#!/usr/bin/env bash
# The paper's protocol (§3.1: 500 epochs, all 50,000 training images, seeds 0-2) in short GPU
# windows, resumed from a small archive between them. See experiments/paper/README.md.
#
#   bash experiments/paper/gpu_run.sh prepare   # here: wheels in .whl/, CIFAR-10 as xz parts in
#                                               # outputs/paper/send/{1,2,3}/
#   bash experiments/paper/gpu_run.sh snapshot COMMIT  # here: that commit's code in .paper_code/
#   bash experiments/paper/gpu_run.sh window    # on the GPU machine, in every command
#
# A window: install the carried wheels; take the data parts this command carried; restore the state
# from the carried archive (outputs/paper/state/, checked first) unless the machine holds a newer
# one; train the stages in order until PAPER_BUDGET seconds have passed; write the archive
# (<= 8 files of <= 16 MiB) into $OUT. Stages, each a pack of 3 seeds per model, two packs at once:
#   1. table1: fig4_plain, fig4_ssim   2. nonlinearity: fig4_ssim_norelu
#   3. shallow: shallow_conv, shallow_ssim   4. make robustness on the stage-1 checkpoints
# PAPER_PROFILE=smoke runs the same on synthetic data with tiny nets on a CPU (the dry run).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROFILE=${PAPER_PROFILE:-paper}
BUDGET=${PAPER_BUDGET:-450}               # seconds of training per window (a command: 600 at most)
WORK=${PAPER_WORK:-/tmp/ssimlayer_paper}  # on the machine; kept between commands of one lease
CARRY=$ROOT/outputs/paper                 # carried: send/<n>/ (data parts), state/ (the archive)
OUT=${OUT:-$CARRY/out}
PY=${PY:-python3}
STATE=$WORK/state
SEEDS=${PAPER_SEEDS:-[0,1,2]}

case $PROFILE in
  paper)
    COMMON="trainer=gpu speed=gpu_graphs"  # CUDA graphs, 8 steps per iteration, data on the GPU
    COMMON+=" callbacks.last_checkpoint.every_n_seconds=60"
    COMMON+=" callbacks.layer_health.plot_every_n_epochs=null"  # plot at the end: 50 redraws per member cost minutes
    WIDTHS_FIG4="" WIDTHS_SHALLOW=""
    EVAL="device=cuda" ;;
  smoke)
    COMMON="debug=smoke trainer.max_epochs=${PAPER_SMOKE_EPOCHS:-2} trainer.limit_train_batches=null"
    COMMON+=" data.num_train=192 data.num_val=64 callbacks.last_checkpoint.every_n_seconds=5"
    WIDTHS_FIG4="model.net.widths=[4,4,8]" WIDTHS_SHALLOW="model.net.widths=[4,4]"
    EVAL="debug=smoke device=cpu" ;;
  *) echo "gpu_run.sh: PAPER_PROFILE must be paper or smoke, got $PROFILE" >&2; exit 2 ;;
esac
COMMON+=" logger=none trainer.enable_progress_bar=false callbacks.fgsm_sweep.progress=false"
STAGES=(
  "table1:fig4_plain:$WIDTHS_FIG4 table1:fig4_ssim:$WIDTHS_FIG4"
  "nonlinearity:fig4_ssim_norelu:$WIDTHS_FIG4"
  "shallow:shallow_conv:$WIDTHS_SHALLOW shallow:shallow_ssim:$WIDTHS_SHALLOW"
)
# What an archive must have been made with: a different string refuses it.
CONFIG="profile=$PROFILE seeds=$SEEDS common=[$COMMON] stages=[${STAGES[*]}] eval=[$EVAL]"

log() { echo "[gpu_run $(date +%H:%M:%S)] $*"; }

prepare() {
  local data=${SSIMLAYER_DATA:-$ROOT/../shared/data/cifar10} parts=$CARRY/parts
  mkdir -p "$ROOT/.whl" "$parts"
  [ -n "$(ls "$ROOT"/.whl/hydra_core-*.whl 2>/dev/null)" ] || {
    "$ROOT/.venv/bin/pip" download -q --no-deps -d "$ROOT/.whl" hydra-core==1.3.8 omegaconf==2.3.1
    "$ROOT/.venv/bin/pip" wheel -q --no-deps -w "$ROOT/.whl" antlr4-python3-runtime==4.9.3
  }
  local f
  for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    [ -s "$parts/$f.bin.xz" ] || { log "xz $f.bin"; xz -6 -T2 -c "$data/$f.bin" >"$parts/$f.bin.xz.tmp"
                                   mv "$parts/$f.bin.xz.tmp" "$parts/$f.bin.xz"; }
  done
  rm -rf "$CARRY/send"; mkdir -p "$CARRY/send/1" "$CARRY/send/2" "$CARRY/send/3"
  cp "$data/SHA256SUMS" "$data/batches.meta.txt" "$CARRY/send/1/"
  ln "$parts"/data_batch_{1,2}.bin.xz "$CARRY/send/1/"
  ln "$parts"/data_batch_{3,4}.bin.xz "$CARRY/send/2/"
  ln "$parts"/{data_batch_5,test_batch}.bin.xz "$CARRY/send/3/"
  du -sh "$CARRY"/send/* "$ROOT/.whl"
}

snapshot() {  # here: the code of a commit in .paper_code/, so windows resume while main moves on
  local commit=${1:-} dest=$ROOT/.paper_code
  [ -n "$commit" ] || { echo "usage: $0 snapshot COMMIT (the commit that made outputs/paper/state)" >&2; exit 2; }
  commit=$(git -C "$ROOT" rev-parse --verify "$commit^{commit}") || exit 2
  rm -rf "$dest"; mkdir -p "$dest/outputs/paper"
  git -C "$ROOT" archive "$commit" src conf experiments/paper | tar -x -C "$dest"
  echo "$commit" >"$dest/COMMIT"
  cp -r "$ROOT/.whl" "$dest/"
  [ -d "$CARRY/send" ] && cp -al "$CARRY/send" "$dest/outputs/paper/"
  if [ -d "$CARRY/state" ]; then
    cp -r "$CARRY/state" "$dest/outputs/paper/"
    "$PY" "$dest/experiments/paper/archive.py" check --archive "$dest/outputs/paper/state" \
      --config "$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"])' \
                 "$CARRY/state/manifest.json")" || exit 2
  fi
  log "code of $commit in $dest; on the GPU machine: bash .paper_code/experiments/paper/gpu_run.sh window," \
      "carry .paper_code/{src,conf,experiments,.whl} and .paper_code/outputs/paper/{send/N,state}"
}

install_wheels() {
  "$PY" -c "import hydra, omegaconf" 2>/dev/null && return
  [ -d /tmp/site ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
}

receive_data() {  # the parts this command carried; returns 1 while some are still missing
  local data=$WORK/data f name
  mkdir -p "$data"
  for f in "$CARRY"/send/*/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    case $name in
      *.xz) [ -s "$data/${name%.xz}" ] && continue
            xz -t "$f" || { echo "gpu_run.sh: data part $name is truncated" >&2; exit 2; }
            xz -dc "$f" >"$data/${name%.xz}.tmp" && mv "$data/${name%.xz}.tmp" "$data/${name%.xz}"
            log "received ${name%.xz}" ;;
      *) cp "$f" "$data/" ;;
    esac
  done
  local missing=()
  for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    [ -s "$data/$f.bin" ] || missing+=("$f.bin")
  done
  if [ ${#missing[@]} -gt 0 ]; then log "data still missing: ${missing[*]}"; return 1; fi
  [ -e "$data/.verified" ] || { (cd "$data" && sha256sum --quiet -c SHA256SUMS) && touch "$data/.verified"; }
  export SSIMLAYER_DATA=$data
}

restore_state() {
  local archive=$CARRY/state device_seq=-1 archive_seq
  [ -f "$WORK/sequence" ] && device_seq=$(cat "$WORK/sequence")
  if [ -d "$archive" ]; then
    "$PY" "$ROOT/experiments/paper/archive.py" check --archive "$archive" --config "$CONFIG" || exit 2
    archive_seq=$("$PY" "$ROOT/experiments/paper/archive.py" sequence --archive "$archive")
    if [ "$archive_seq" -gt "$device_seq" ]; then
      "$PY" "$ROOT/experiments/paper/archive.py" restore --archive "$archive" --state "$STATE" \
        --config "$CONFIG" || exit 2
      echo "$archive_seq" >"$WORK/sequence"
    else
      log "this machine's state (sequence $device_seq) is as new as the archive ($archive_seq): kept"
    fi
  elif [ "$device_seq" -lt 0 ]; then
    if [ "${PAPER_FRESH:-0}" != 1 ]; then
      echo "gpu_run.sh: error: missing resume archive $archive/manifest.json and no state on this" \
        "machine; carry outputs/paper/state, or set PAPER_FRESH=1 for the first window" >&2
      exit 2
    fi
    log "starting afresh (PAPER_FRESH=1)"
    mkdir -p "$STATE"; echo 0 >"$WORK/sequence"
  fi
}

write_archive() {
  [ -d "$STATE" ] || return 0
  local seq=$(( $(cat "$WORK/sequence") + 1 ))
  "$PY" "$ROOT/experiments/paper/archive.py" write --state "$STATE" --out "$OUT" \
    --config "$CONFIG" --sequence "$seq" && echo "$seq" >"$WORK/sequence"
}

train_pack() {  # experiment model overrides deadline: one pack, resumed when it has a checkpoint
  local exp=$1 model=$2 extra=$3 deadline=$4 dir=$STATE/$1/$2_pack resume=""
  [ -e "$dir/DONE" ] && return 0
  [ -f "$dir/pack_checkpoints/last.ckpt" ] && resume="ckpt_path=$dir/pack_checkpoints/last.ckpt"
  local left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 20 ] || return 1
  log "pack $exp/$model seeds=$SEEDS ${resume:+(resumed)}, ${left}s left"
  # shellcheck disable=SC2086
  if timeout -k 10 "$left" "$PY" -m ssimlayer.pack experiment="$exp" model="$model" \
      seeds="$SEEDS" $COMMON $extra $resume hydra.run.dir="$dir" >>"$dir.log" 2>&1; then
    touch "$dir/DONE"; log "pack $exp/$model done"
  else
    log "pack $exp/$model stopped (exit $?); resumes next window"; return 1
  fi
}

window() {
  local start deadline stage job pids ok
  start=$(date +%s); deadline=$(( start + BUDGET ))
  mkdir -p "$WORK" "$OUT"
  install_wheels
  export PYTHONPATH=$ROOT/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 WANDB_MODE=offline
  if [ "$PROFILE" = paper ] && ! receive_data; then
    log "data-only command: send the next parts"; return 0
  fi
  restore_state
  trap 'write_archive; exit 3' TERM INT
  for stage in "${STAGES[@]}"; do
    pids=() ok=1
    for job in $stage; do
      IFS=: read -r exp model extra <<<"$job"
      mkdir -p "$STATE/$exp"
      train_pack "$exp" "$model" "$extra" "$deadline" & pids+=($!)
    done
    for job in "${pids[@]}"; do wait "$job" || ok=0; done
    [ "$ok" = 1 ] || break
  done
  if [ "$ok" = 1 ] && [ ! -e "$STATE/robustness/DONE" ]; then
    log "robustness on the table1 checkpoints"
    mkdir -p "$STATE/robustness"
    # shellcheck disable=SC2086
    if timeout -k 10 $(( deadline - $(date +%s) )) "$PY" -m ssimlayer.eval \
        "runs=[$STATE/table1/fig4_plain_pack,$STATE/table1/fig4_ssim_pack]" $EVAL \
        paths.output_root="$STATE" wandb.enabled=false >>"$STATE/robustness.log" 2>&1; then
      touch "$STATE/robustness/DONE"; log "protocol complete"
    else
      log "robustness stopped; reruns next window"
    fi
  fi
  write_archive
  du -ab "$OUT" | tail -n 20
}

case ${1:-} in
  prepare) prepare ;;
  snapshot) snapshot "${2:-}" ;;
  window) window ;;
  *) echo "usage: $0 prepare|snapshot COMMIT|window (see experiments/paper/README.md)" >&2; exit 2 ;;
esac
