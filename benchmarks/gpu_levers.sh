#!/usr/bin/env bash
# Training options by 3-fold cross-validation, and configs/cpu.yaml with more epochs, on one GPU.
#
#   benchmarks/gpu_levers.sh LOWER_FRACATLAS UPPER_FRACATLAS OUT [DEADLINE_S]
#
# LOWER / UPPER: FracAtlas trees (../shared/data/fracatlas-lowerlimb and -upperlimb, or the two
# halves of `limbscan data download fracatlas`). Runs at once, one process per fold, on the one GPU:
#   cv-base  every scenario, configs/cpu.yaml as it is             (3 folds of train + val)
#   cv-aux   the same with the upper-limb images as auxiliary data (--aux)
#   cv-hosp  whole-image with the cross-hospital augmentation (p_source 0.5, p_invert 0.1)
#   long     `limbscan benchmark` with configs/cpu.yaml and twice the epochs (test split, once)
# The folds are the ones `limbscan cv -k 3` deals on this dataset anywhere. After DEADLINE_S
# seconds (default 3000) whatever still trains is stopped; the CVs whose folds all finished are
# summarised (cv.json), and OUT/results.tgz keeps every summary, metric and log (no checkpoints).
# $LIMBSCAN: the command (default: limbscan; e.g. "python -m limbscan.cli" with PYTHONPATH=src).
# $OVERRIDES: key=value config overrides added to every run (e.g. a quick dry run's step limits).
# $JOBS: which of cv-base cv-aux cv-hosp long to run (default: all four); $NICE_JOBS: those of them
# that run at the lowest CPU priority (nice 19), so they take what the others leave.
# Called again with the same OUT (on the same machine), it reuses the imported datasets and caches
# and every cv fold resumes from its last checkpoint: a job cut by one call's deadline goes on.
# Measured on an H100 with all four at once: a whole-image fold 40-50 s, a detector epoch 64-88 s
# on 629 images and 226 s with the auxiliary images (CPU-bound); on an H200 with cv-aux and cv-base
# (nice 19): 140-220 s and 59-97 s, cv-aux reaching its third detector epoch by 520 s.
set -u
LOWER=$1 UPPER=$2 OUT=$3 DEADLINE=${4:-3000}
read -r -a LS <<<"${LIMBSCAN:-limbscan}"
read -r -a EXTRA <<<"${OVERRIDES:-}"
CFG=configs/cpu.yaml
START=$(date +%s)
mkdir -p "$OUT/logs"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
say() { echo "[$(( $(date +%s) - START )) s] $*"; }

if [ -f "$OUT/logs/datasets.done" ]; then
  say "reusing the datasets and caches in $OUT (unfinished folds resume from their checkpoints)"
else
  say "import and split"
  { "${LS[@]}" data import fracatlas "$LOWER" -o "$OUT/fracatlas" -q &&
    "${LS[@]}" data import fracatlas "$UPPER" -o "$OUT/fracatlas-upper" --exclude-parts leg,hip -q &&
    "${LS[@]}" data split "$OUT/fracatlas" --seed 0; } >"$OUT/logs/import.log" 2>&1 || { tail -n 30 "$OUT/logs/import.log"; exit 1; }
  for d in fracatlas fracatlas-upper; do  # once, with every core, before the jobs share it
    "${LS[@]}" data cache "$OUT/$d" -c $CFG --workers "$(nproc)" -q >>"$OUT/logs/import.log" 2>&1 || exit 1
  done
  touch "$OUT/logs/datasets.done"
  say "caches built"
fi

DS=$OUT/fracatlas AUX=$OUT/fracatlas-upper
HOSP=(stages.whole-image.data.augment.p_source=0.5 stages.whole-image.data.augment.p_invert=0.1)
declare -A PIDS
JOBS=" ${JOBS:-cv-base cv-aux cv-hosp long} "
launch() {  # name, then the command
  local name=$1; shift
  [[ $JOBS == *" ${name%-[0-9]} "* ]] || return 0
  [[ " ${NICE_JOBS:-} " == *" ${name%-[0-9]} "* ]] && set -- nice -n 19 "$@"
  ( s=$(date +%s); "$@" >>"$OUT/logs/$name.log" 2>&1; rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" >>"$OUT/logs/jobs.tsv" ) &
  PIDS[$name]=$!
}
for f in 0 1 2; do
  launch "cv-base-$f" "${LS[@]}" cv "$DS" -c $CFG -o "$OUT/cv-base" -k 3 --scenario all --fold $f "${EXTRA[@]}"
  launch "cv-aux-$f" "${LS[@]}" cv "$DS" -c $CFG -o "$OUT/cv-aux" -k 3 --scenario all --aux "$AUX" --fold $f "${EXTRA[@]}"
done
launch cv-hosp "${LS[@]}" cv "$DS" -c $CFG -o "$OUT/cv-hosp" -k 3 --scenario whole-image "${HOSP[@]}" "${EXTRA[@]}"
launch long "${LS[@]}" benchmark "$DS" -c $CFG -o "$OUT/long" train.epochs=12 train.detector_epochs=6 "${EXTRA[@]}" -q
say "launched ${#PIDS[@]} jobs"

while :; do
  alive=0
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  [ $alive -eq 0 ] && break
  if [ $(( $(date +%s) - START )) -ge "$DEADLINE" ]; then
    say "deadline: stopping $alive job(s)"
    for p in "${PIDS[@]}"; do pkill -TERM -P "$p"; done; sleep 5
    for p in "${PIDS[@]}"; do pkill -KILL -P "$p"; done
    break
  fi
  sleep 5
done
wait 2>/dev/null
say "jobs ended (name, exit status, seconds):"; cat "$OUT/logs/jobs.tsv" 2>/dev/null

# Summaries of the CVs whose folds all finished (folds=[]: nothing trains).
HOSP="${HOSP[*]}" python - "$DS" "$CFG" "$OUT" "$AUX" <<'PY'
import os, sys
from limbscan.config import add_auxiliary, load_config
from limbscan.train.cv import cross_validate
ds, cfg, out, aux = sys.argv[1:]
hosp, extra_over = os.environ["HOSP"].split(), os.environ.get("OVERRIDES", "").split()
for name, extra, scen in (("cv-base", None, "all"), ("cv-aux", [aux], "all"), ("cv-hosp", None, "whole-image")):
    c = add_auxiliary(load_config(cfg, (hosp if name == "cv-hosp" else []) + extra_over), extra)
    try:
        s = cross_validate(ds, c, f"{out}/{name}", k=3, scenarios=scen, folds=[], progress=False, n_boot=1000)
    except Exception as err:  # noqa: BLE001 - a summary that fails must not lose the others
        print(name, "no summary:", err)
        continue
    if "scenarios" not in s:
        print(name, "unfinished:", s)
        continue
    for sc, r in s["scenarios"].items():
        print(f"{name} {sc}: AUC {r['auc_mean']:.3f} +- {r['auc_sd']:.3f} folds "
              f"{' '.join(f'{a:.3f}' for a in r['fold_auc'])} pooled {r['oof_auc']:.3f}")
PY
[ -f "$OUT/logs/long.log" ] && tail -n 30 "$OUT/logs/long.log"
say "summaries written"
(cd "$OUT" && find . \( -path ./fracatlas -o -path ./fracatlas-upper \) -prune -o -type f \
   \( -name '*.json' -o -name '*.jsonl' -o -name '*.csv' -o -name '*.log' -o -name '*.tsv' -o -name '*.md' \
      -o -name '*.yaml' -o -name '*.png' \) -print | tar czf results.tgz -T -)
say "results: $OUT/results.tgz ($(du -h "$OUT/results.tgz" | cut -f1))"
