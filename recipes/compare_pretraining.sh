#!/usr/bin/env bash
# What ImageNet pretraining buys MAG-SD on real radiographs: each configuration trained with the same data and
# seeds, then evaluated on the test split (macro F1 with patient-bootstrap 95% intervals, per-class sensitivity,
# and, with a box file, the share of MA-Net's attention map inside the lung boxes); a Markdown table at the end.
#
#   recipes/compare_pretraining.sh DATA OUTPUT [LUNG_BOXES.json]
#
# Settings, from the environment (defaults: the 2-core CPU comparison of docs/results.md):
#   CONFIGS      names of the configurations to run, from the list below (default: the CPU comparison)
#   SIZE, EPOCHS image size and epochs of the EfficientNet-Lite0 runs (128, 8)
#   FREEZE       stages frozen when fine-tuning pretrained weights (3)
#   SEEDS        seeds of every configuration ("0 1")
#   BATCH        images per step and process (32)
#   LAUNCH       how train.py is started ("accelerate launch"; e.g. "accelerate launch --num_processes 8")
#   TRAIN_ARGS   added to every training command ("--cpu"; on a GPU: "--mixed-precision bf16")
#   DEVICE       device of the evaluation and of the step benchmark (cpu)
#   BENCH_DTYPE  data type of the step benchmark when STEP_BENCH=1 (float32; on a GPU: bfloat16)
#   STEP_BENCH   1: also time a MAG-SD step against a plain step of Lite0 (recipes/benchmark.py --suite step)
#   BENCH_ARGS   further flags of that benchmark (e.g. "--min-run-time 60")
#   EVAL_ARGS    further flags of magsd evaluate (e.g. "--bootstrap 5000" for finer intervals)
# A run folder that exists is resumed with the same settings (train.py refuses other settings), so the script
# can be run again after an interruption; a finished run keeps the training time it recorded.
set -euo pipefail
DATA=${1:?usage: compare_pretraining.sh DATA OUTPUT [LUNG_BOXES.json]}
OUT=${2:?usage: compare_pretraining.sh DATA OUTPUT [LUNG_BOXES.json]}
BOXES=${3:-}
SIZE=${SIZE:-128}; EPOCHS=${EPOCHS:-8}; FREEZE=${FREEZE:-3}; SEEDS=${SEEDS:-0 1}; BATCH=${BATCH:-32}
LAUNCH=${LAUNCH:-accelerate launch}; TRAIN_ARGS=${TRAIN_ARGS:---cpu}; DEVICE=${DEVICE:-cpu}
CONFIGS=${CONFIGS:-lite0-pretrained lite0-scratch resnet18-64px-scratch}
HERE=$(cd "$(dirname "$0")" && pwd)

flags() {  # the training flags of a configuration
  case "$1" in
    lite0-pretrained) echo "--model magsd_efficientnet_lite0 --pretrained --freeze-stages $FREEZE --img-size $SIZE --epochs $EPOCHS" ;;
    lite0-pretrained-unfrozen) echo "--model magsd_efficientnet_lite0 --pretrained --img-size $SIZE --epochs $EPOCHS" ;;
    lite0-scratch) echo "--model magsd_efficientnet_lite0 --img-size $SIZE --epochs $EPOCHS" ;;
    lite0-pretrained-baseline) echo "--model magsd_efficientnet_lite0 --method baseline --pretrained --freeze-stages $FREEZE --img-size $SIZE --epochs $EPOCHS" ;;
    resnet18-64px-scratch) echo "--model magsd_resnet18 --img-size 64 --epochs 12" ;;
    *) echo "compare_pretraining.sh: unknown configuration '$1'" >&2; exit 2 ;;
  esac
}

mkdir -p "$OUT"
for config in $CONFIGS; do
  for seed in $SEEDS; do
    run="$OUT/$config-seed$seed"
    resume=(); [ -e "$run/args.yaml" ] && resume=(--resume)
    finished=; [ -e "$run/wall_seconds.txt" ] && finished=1
    start=$(date +%s)
    # a finished run is only checked against these settings (train.py refuses a run trained otherwise)
    # shellcheck disable=SC2086  # the flags are words on purpose
    $LAUNCH "$HERE/train.py" --data "$DATA" --output "$run" --seed "$seed" --batch-size "$BATCH" \
      $(flags "$config") $TRAIN_ARGS "${resume[@]}"
    [ -n "$finished" ] || echo "$(( $(date +%s) - start ))" > "$run/wall_seconds.txt"
    magsd evaluate "$run/best" "$DATA" --output "$run/eval_test" --device "$DEVICE" ${BOXES:+--boxes "$BOXES"} ${EVAL_ARGS:-}
  done
done

if [ "${STEP_BENCH:-0}" = 1 ]; then
  python "$HERE/benchmark.py" --suite step --model magsd_efficientnet_lite0 --baseline tf_efficientnet_lite0 \
    --img-size "$SIZE" --batch-size "$BATCH" --device "$DEVICE" --dtype "${BENCH_DTYPE:-float32}" --output-dir "$OUT" ${BENCH_ARGS:-}
fi

python - "$OUT" $CONFIGS <<'PY'
"""The comparison table: per configuration, the mean over seeds and each seed's interval."""
import json, sys
from pathlib import Path

out, configs = Path(sys.argv[1]), sys.argv[2:]
rows = []
for config in configs:
    runs = sorted(out.glob(f'{config}-seed*'))
    reports = [json.loads((r / 'eval_test' / 'evaluation.json').read_text()) for r in runs]
    f1 = [f"{r['metrics']['macro_f1']:.3f} [{r['intervals']['macro_f1'][0]:.3f}, {r['intervals']['macro_f1'][1]:.3f}]"
          for r in reports]
    classes = list(reports[0]['metrics']['sensitivity'])
    sens = ', '.join(f"{c} {sum(r['metrics']['sensitivity'][c] for r in reports) / len(reports):.2f}" for c in classes)
    maps = [r['localization']['mass_in_boxes'] for r in reports if r.get('localization')]
    mass = f'{sum(maps) / len(maps):.2f}' if maps else 'n/a'
    minutes = [int((r / 'wall_seconds.txt').read_text()) / 60 for r in runs]
    rows.append(f"| {config} | {'; '.join(f1)} | {sens} | {mass} | {', '.join(f'{m:.0f}' for m in minutes)} |")
table = '\n'.join(['| configuration | macro F1 per seed [95% CI, patients] | sensitivity (mean of seeds) '
                   '| attention in lung boxes | minutes per run |', '|---|---|---|---|---|', *rows])
(out / 'comparison.md').write_text(table + '\n')
print(table)
PY
