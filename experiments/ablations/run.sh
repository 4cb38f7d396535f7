#!/usr/bin/env bash
# Issue 28 ablations under schedule=cpu_medium (12 epochs, 10,000 images), seeds 0 and 1, each
# factor alone against the paper-literal default. Slices (experiments/ablations/README.md):
#   shallow1  the shallow pair: input standardisation; ReLU after shallow_conv's first layer
#   shallow2  shallow_ssim: SSIM filter init scale, weight decay on the SSIM filters, C1/C2
#   fig4      the Fig. 4 pair: default, standardisation, init scale, weight decay, C1/C2, and the
#             narrower Fig. 4 reading (widths 32-32-64, the last layer at 4x4)
# One process per run (a NaN-guard stop ends a multirun, so runs are not grouped), two at a time,
# one thread each (2-core CPU). Run dirs: outputs/ablations/cpu_medium/<factor>_<value>/<model>_seed<seed>/.
#   experiments/ablations/run.sh shallow2
set -u
cd "$(dirname "$0")/../.."
SCHEDULE=${SCHEDULE:-cpu_medium}
COMMON="schedule=$SCHEDULE logger=csv trainer.enable_progress_bar=false callbacks.fgsm_sweep.progress=false"
NARROW="model.net.widths=[32,32,64] model.net.pools=[2,4,1]"
jobs=()
for seed in 0 1; do
  case ${1:-} in
    shallow1)
      for model in shallow_conv shallow_ssim; do
        jobs+=("shallow standardize_on $model $seed")
        jobs+=("shallow standardize_off $model $seed model.net.standardize=false")
      done
      jobs+=("shallow relu_first_on shallow_conv $seed model.net.relu=[true,true]") ;;
    shallow2)
      jobs+=("shallow init_std_0.1 shallow_ssim $seed model.net.layers.0.init_std=0.1")
      jobs+=("shallow ssim_wd_x0 shallow_ssim $seed model.ssim_weight_decay_scale=0")
      jobs+=("shallow ssim_wd_x2 shallow_ssim $seed model.ssim_weight_decay_scale=2")
      jobs+=("shallow c1c2_x10 shallow_ssim $seed +model.net.layers.0.c1=1e-3 +model.net.layers.0.c2=9e-3") ;;
    fig4)
      for model in fig4_plain fig4_ssim; do
        jobs+=("table1 default $model $seed")
        jobs+=("table1 standardize_off $model $seed model.net.standardize=false")
        jobs+=("table1 narrow $model $seed $NARROW")
      done
      jobs+=("table1 init_std_0.1 fig4_ssim $seed model.net.layers.2.init_std=0.1")
      jobs+=("table1 ssim_wd_x0 fig4_ssim $seed model.ssim_weight_decay_scale=0")
      jobs+=("table1 ssim_wd_x2 fig4_ssim $seed model.ssim_weight_decay_scale=2")
      jobs+=("table1 c1c2_x10 fig4_ssim $seed +model.net.layers.2.c1=1e-3 +model.net.layers.2.c2=9e-3") ;;
    *) echo "usage: $0 shallow1|shallow2|fig4" >&2; exit 2 ;;
  esac
done
mkdir -p outputs/ablations/logs
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c '
  set -- {}
  exp=$1 dir=$2 model=$3 seed=$4; shift 4
  OMP_NUM_THREADS=1 .venv/bin/python -m ssimlayer.train -m experiment=$exp '"$COMMON"' model=$model seed=$seed "$@" \
    hydra.sweep.dir=outputs/ablations/'"$SCHEDULE"'/$dir "hydra.sweep.subdir=\${model.name}_seed\${seed}" \
    > outputs/ablations/logs/'"$SCHEDULE"'_${dir}_${model}_seed${seed}.log 2>&1
  echo "$dir $model seed $seed: exit $?"'
