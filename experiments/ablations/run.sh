#!/usr/bin/env bash
# Issue 28, first slice of the ablations: the shallow pair under cpu_medium (12 epochs, 10,000
# images), factors input standardisation and a ReLU after shallow_conv's first layer, seeds 0 and 1.
# One process per run (a NaN-guard stop ends a multirun, so runs are not grouped), two at a time,
# one thread each (2-core CPU). Run dirs: outputs/ablations/<factor>_<value>/<model>_seed<seed>/.
set -u
cd "$(dirname "$0")/../.."
SCHEDULE=${SCHEDULE:-cpu_medium}
COMMON="experiment=shallow schedule=$SCHEDULE logger=csv trainer.enable_progress_bar=false callbacks.fgsm_sweep.progress=false"
jobs=()
for seed in 0 1; do
  for model in shallow_conv shallow_ssim; do
    jobs+=("standardize_on $model $seed")
    jobs+=("standardize_off $model $seed model.net.standardize=false")
  done
  jobs+=("relu_first_on shallow_conv $seed model.net.relu=[true,true]")
done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c '
  set -- {}
  dir=$1 model=$2 seed=$3; shift 3
  OMP_NUM_THREADS=1 .venv/bin/python -m ssimlayer.train -m '"$COMMON"' model=$model seed=$seed "$@" \
    hydra.sweep.dir=outputs/ablations/'"$SCHEDULE"'/$dir "hydra.sweep.subdir=\${model.name}_seed\${seed}" \
    > outputs/ablations/logs/'"$SCHEDULE"'_${dir}_${model}_seed${seed}.log 2>&1
  echo "$dir $model seed $seed: exit $?"'
