#!/usr/bin/env bash
# Builds models/lumbar-ai-1, the model shipped with the project, from the best recipe measured on real scans
# (model_export/RESULTS.md): the text-guided model (cpu-hour config, spine band 224 x 128) trained on 240
# generated studies mixed with the real labelled training cases (30 % of the steps), exported with float16
# weights and stored prompt embeddings, then scored on the real validation split and the generated test set;
# the figures, the learning curves and a contact sheet go into the model directory.
#
#   bash scripts/build_release_model.sh                 # about 2 h on 2 cores (training on one thread)
#   BUDGET_S=20000 bash scripts/build_release_model.sh  # longer; run it again to resume from WORK/mixed/last.pt
#
# Environment: WORK (runs/release), OUT (models/lumbar-ai-1), REAL (../shared/data/real_labelled),
# BUDGET_S (6000 CPU-seconds of training on one thread), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/release}
OUT=${OUT:-models/lumbar-ai-1}
REAL=${REAL:-../shared/data/real_labelled}
BUDGET_S=${BUDGET_S:-6000}
THREADS=${THREADS:-1}
LA=.venv/bin/lumbar-ai
PY=.venv/bin/python

echo "== data: SPIDER masks split by patient, 240 generated training studies, 30 generated test studies"
$PY -c "from pathlib import Path; from model_export.demo_model import spider_split; spider_split(Path('$WORK/data'))"
synth() { $LA synth --no-axial --no-localizer --workers 2 "$@"; }
[ -f "$WORK/data/train/study_10119/truth.json" ] || synth --out "$WORK/data/train" --studies 120 --seed 10000 \
  --spider-dir "$WORK/data/spider_train"
[ -f "$WORK/data/train/study_20119/truth.json" ] || synth --out "$WORK/data/train" --studies 120 --seed 20000 \
  --prevalence 0.6 --normal-fraction 0.05 --spider-dir "$WORK/data/spider_train"
[ -f "$WORK/data/test/study_90029/truth.json" ] || synth --out "$WORK/data/test" --studies 30 --seed 90000 \
  --spider-dir "$WORK/data/spider_held_out"

echo "== training for $BUDGET_S CPU-seconds on $THREADS thread(s) (resumable)"
resume=()
[ -f "$WORK/mixed/last.pt" ] && resume=(--resume)
$LA train --data "$WORK/data/train" --config cpu-hour --spine-band 224 128 --threads "$THREADS" \
  --budget-s "$BUDGET_S" --real "$REAL" --real-share 0.3 --out "$WORK/mixed" --no-progress "${resume[@]}"

echo "== export, then the real validation split and the generated test set as the worker delivers them"
rm -rf "$WORK/export"
$LA export --checkpoint "$WORK/mixed/final.pt" --out "$WORK/export" --name "$(basename "$OUT")"
$LA evaluate --models "$WORK/export" --names "$(basename "$OUT")" --data "$REAL" --out "$WORK/eval_real"
$LA evaluate --models "$WORK/export" --names "$(basename "$OUT")" --data "$WORK/data/test" --postprocess \
  --out "$WORK/eval_generated"

echo "== model directory"
$PY -m model_export.release --export "$WORK/export" --run "$WORK/mixed" --real-eval "$WORK/eval_real" \
  --generated-eval "$WORK/eval_generated" --out "$OUT"
