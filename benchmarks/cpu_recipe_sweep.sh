#!/usr/bin/env bash
# The default (CPU) recipe's sweep: trains the teacher or the student of the default
# pipeline with one set of overrides and records the kNN top-1 after every epoch on
# the whole curated default data (monitor bank = every labeled train image, 1,000
# test queries: the evaluate stage's kNN), and the seconds per epoch.
#
#   bash benchmarks/cpu_recipe_sweep.sh NAME teacher [--set KEY=VALUE ...]
#   bash benchmarks/cpu_recipe_sweep.sh NAME student:TEACHER_DIR [--set KEY=VALUE ...]
#
# Run from the repository root after `dvc repro curate`; appends one line per run to
# $SWEEP/results.txt (default /tmp/recipe-sweep), which benchmarks/results/cpu-recipe-sweep
# keeps. MLflow tracking goes to a database in $SWEEP, not the project's.
set -uo pipefail
name=$1; stage=$2; shift 2
sweep=${SWEEP:-/tmp/recipe-sweep}
out=$sweep/$name
rm -rf "$out" && mkdir -p "$out"
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_TRACKING_URI=sqlite:///$sweep/mlflow.db
started=$(date +%s)
if [ "$stage" = teacher ]; then
  section=teacher
  command=(sslpipe teacher --data data/curated --out "$out/model" --checkpoints "$out/ckpt")
else
  section=pretrain
  command=(sslpipe pretrain --data data/curated --teacher "${stage#student:}" --out "$out/model" --checkpoints "$out/ckpt")
fi
"${command[@]}" --set $section.monitor.knn_bank=100000 --set $section.monitor.knn_queries=1000 \
  --set $section.monitor.system_metrics=false "$@" >"$out/log.txt" 2>&1 || { echo "$name failed: see $out/log.txt"; exit 1; }
python - "$out/model/history.json" "$name $stage $*" "$(( $(date +%s) - started ))" <<'PY' | tee -a "$sweep/results.txt"
import json, sys
epochs = json.load(open(sys.argv[1]))["epochs"]
knn = [round(e["knn_top1_monitor"], 3) for e in epochs]
seconds = [round(e["seconds"]) for e in epochs]
print(f"{sys.argv[2]} : {sys.argv[3]} s : kNN per epoch {knn} : seconds per epoch {seconds}")
PY
