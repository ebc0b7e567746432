#!/usr/bin/env bash
# One call on a lent GPU machine (10 minutes at most), in one of six plans. The default, PLAN=auto, is the first
# of PLAN=accuracy, PLAN=accuracy-long, PLAN=compile, PLAN=distillation and PLAN=table whose result is not committed
# yet (benchmarks/results/gpu-*-accuracy-device-*, gpu-*-accuracy-long-*, gpu-*-device-compile-step-2epoch,
# gpu-*-cifar10-distillation; the table goes on one method per session).
#
# PLAN=accuracy: why SimCLR ends under lightly's kNN after 200 epochs (0.777 against 0.848 on one H200,
#   commit 5346cb7): the same short recipe (ACCURACY_EPOCHS, 15) trained five ways in one call, each changing
#   one thing against the first, so that a gap shows which part it comes from (lightly is unpacked from the
#   wheels in $DATASETS/wheels for 2 and 4):
#   1. ours on the device path in bf16, as the table trains (lightly_benchmark.py --loader device);
#   2. the same with lightly's own ResNet-18 (--backbone lightly_resnet18_cifar: no ReLU after the stem,
#      PyTorch's default init);
#   3. the same as 1 with another seed: how far two runs of one setup fall apart;
#   4. lightly's own heads, loss, transforms and loop against ours, both through the DataLoader/PIL path
#      (lightly_side_by_side.py);
#   5. ours on the device path in fp32, if the time left allows.
#
# PLAN=accuracy-long: the same question further along. PLAN=accuracy (15 epochs, committed 2026-11-27) found no gap
#   at all: every way agreed within 0.9 points (0.595-0.604). lightly's kNN curve of SimCLR at batch 512 (its docs,
#   2021-2022: bench_knn-cifar10-200epochs.png; lr 0.06, no BN in the head, final 0.83) passes ours only later:
#   about 0.60 at epoch 15 as ours, 0.71 at epoch 50 against our 0.673, 0.755 at 100 against 0.711. So this plan
#   trains the first epochs of the same 200-epoch schedule (ACCURACY_LONG_S seconds each, about 37 epochs on an
#   H200, eager), each run changing one thing that both lightly runs (2021 and 2023) share and ours does not,
#   against the committed 200-epoch SimCLR run (gpu-*-cifar10-200epoch-compile-simclr), whose curve is the baseline:
#   1. lightly's ResNet-18 (--backbone lightly_resnet18_cifar);
#   2. a second dose of JPEG loss: the archive re-encoded at quality 50 (benchmarks/reencode_jpeg.py; 6.9/255 more
#      error, about what the first encoding added to CIFAR-10's pixels): if it costs nothing, neither did the first;
#   3. each view through the network on its own, BatchNorm statistics per view (--simclr-forward per-view);
#   4. fp32 instead of bf16 autocast, if time is left (not on an H200 at the default ACCURACY_LONG_S).
#   gpu-accuracy-long-summary/results.md sets the curves side by side at every 5th epoch.
#
# PLAN=distillation: distillation as LightlyTrain sells it, at full scale (all of CIFAR-10) in one call. A CIFAR
#   ResNet-50 SimCLR teacher for DISTILL_TEACHER_S seconds, then each student (the CIFAR ResNet-18, MobileNetV3-Small)
#   distilled for DISTILL_STUDENT_S seconds and raced against SimCLR alone for the same training time; every model's
#   ONNX throughput. Each model gets the whole epochs of its schedule that fit in its budget, measured by a two-epoch
#   probe (distillation_benchmark.py --teacher-seconds/--student-seconds): the 200-epoch teacher of the README's command
#   would take about 20 minutes on an H200 if a CIFAR ResNet-50 step costs there what it does on a CPU (2.85x the
#   ResNet-18's), more than a whole 15-minute session.
#
# PLAN=table: the lightly table, one method per session.
#   1. the machine: GPU, driver, torch and torchvision versions, and an eager step profile (40 s at most);
#   2. the first method of TABLE_ORDER with no committed benchmarks/results/gpu-*-cifar10-200epoch[-compile[-step]]-<method>,
#      for 200 epochs with torch.compile (eager for the methods of TABLE_EAGER, which it slows down) and a kNN
#      evaluation after every epoch (about 8 minutes for SimCLR on an H200). If the call ends first, the epochs it
#      trained still come back (<method>-knn_per_epoch.json).
#   A method that needs more than one call (BYOL or MoCo may, on an H100) resumes from its checkpoints in
#   /tmp/gpu-session-work when the same command runs again on the still-warm machine (SKIP_PROFILE=1).
#   Distillation is not in the order: its teacher is the best method trained in the same work dir, which
#   a fresh machine does not have (PLAN=distillation trains its own teacher).
#
# PLAN=speed: where the time goes, after a change to the engine.
#   1. the machine;
#   2. where a SimCLR step's time goes (drawing and rendering the views, model step, each compiled: step_profile.py),
#      and the DataLoader/PIL path for one SimCLR epoch: the baseline the fast path is measured against;
#   3. every method for 2 epochs on the device path: images/s, epoch time, kNN time, peak memory;
#   4. SimCLR with torch.compile for 2 epochs: what compiling gives;
#   5. SimCLR for as many epochs as the time left allows, kNN after every epoch, compiled if 4 showed it pays.
#
# PLAN=compile: whether compiling the whole training step as one graph (--compile step) makes the four methods that
#   do not fit 200 epochs in 10 minutes fit (BYOL, DINO, MoCo, VICReg: 13-15 minutes projected on one H200 at
#   5346cb7, eager; compiling their networks alone gave BYOL 1.08x). On a CPU the whole step dispatches 3.3x fewer
#   operators than eager, 1.3x fewer than the networks compiled (results/cpu-kernel-profile-compile).
#   1. BYOL for 2 epochs, its whole step compiled;
#   2. the same replayed as CUDA graphs (--compile-mode reduce-overhead): one launch per forward and backward;
#   3. BYOL's and SimCLR's compiled step kernel by kernel (gpu-kernel-profile-compile-step; BYOL from the
#      inductor cache of 1): how many launches compiling takes away, and how long the device still waits;
#   4. MoCo, DINO and VICReg for 2 epochs the faster way of 1 and 2, as long as the time left allows.
#
# Every plan ends with where each method's step spends the device's time (kernel_profile.py: phases, operator
# groups, device idle share; 60 s at most), until such a profile is committed (PLAN=speed: always), then with the
# GPU-only tests (pytest -m cuda) if 40 s are left: pytest comes from the wheels in $DATASETS/wheels on a bare
# machine (benchmarks/README.md).
#
# Each stage has its own timeout, so a slow or failing stage leaves the later ones their time, and
# every stage's results.json/results.md are packed into $OUT/results.tar.gz as soon as it ends.
# Usage, from the repository root (CIFAR-10's archive in $DATASETS):
#   OUT=/tmp/out DATASETS=.data bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:?set OUT to the folder for the results}
DATASETS=${DATASETS:-../shared/datasets}
BUDGET_S=${BUDGET_S:-560}      # the whole script, seconds
WORKERS=${WORKERS:-14}
EXTRA=${EXTRA:-}               # e.g. "--train-per-class 20 --test-per-class 10 --device cpu" for a smoke run
STEP_PROFILE_ARGS=${STEP_PROFILE_ARGS:-}  # e.g. "--batch-size 32 --calls 2 --device cpu" for a smoke run
PLAN=${PLAN:-auto}
case "$PLAN" in  # before any work: a mistyped plan costs no device time
  auto | accuracy | accuracy-long | compile | distillation | table | speed) ;;
  *) echo "PLAN must be auto, accuracy, accuracy-long, compile, distillation, table or speed, not $PLAN" >&2; exit 2 ;;
esac
ACCURACY_EPOCHS=${ACCURACY_EPOCHS:-15}
ACCURACY_LONG_S=${ACCURACY_LONG_S:-155}  # each run of PLAN=accuracy-long but the last (about 37 epochs), seconds
# The side by side's CIFAR-10 subset: all of it by default. Its arguments come last, so a smoke run may override
# any of them: e.g. "--train-per-class 20 --test-per-class 10 --batch-size 32 --device cpu".
SIDE_BY_SIDE_ARGS=${SIDE_BY_SIDE_ARGS:---train-per-class 5000 --test-per-class 1000}
DISTILL_TEACHER_S=${DISTILL_TEACHER_S:-180}  # the teacher's time budget, evaluations included, seconds
DISTILL_STUDENT_S=${DISTILL_STUDENT_S:-45}   # each distilled student's, seconds; SimCLR alone matches its training time
DISTILL_ARGS=${DISTILL_ARGS:-}  # e.g. "--train-per-class 20 --test-per-class 10 --device cpu --teacher resnet18_cifar"
TABLE_EPOCHS=${TABLE_EPOCHS:-200}
TABLE_ORDER=${TABLE_ORDER:-simclr barlowtwins simsiam byol moco dino vicreg}  # cheapest first (2-epoch H200 rates); vicreg has no lightly row
# Trained eager in the table: compiled, their second epoch was slower on one H200 (commit 5346cb7: Barlow Twins 2.76 s
# against 2.43 s eager, SimSiam 2.50 s against 2.23 s), and compiling costs about 40 s more.
TABLE_EAGER=${TABLE_EAGER:-barlowtwins simsiam}
# What the table's other methods compile (lightly_benchmark.py --compile): networks, each on its own (SimCLR's
# committed run), or step, the whole training step as one graph, once PLAN=compile has shown it pays on a GPU.
TABLE_COMPILE=${TABLE_COMPILE:-networks}
# PLAN=compile's methods after BYOL (step 4), in order.
COMPILE_STEP_METHODS=${COMPILE_STEP_METHODS:-moco,dino,vicreg}
# The kernel profile's methods, the most puzzling first (a call cut short keeps those it finished): BYOL's and MoCo's
# eager steps cost about twice SimCLR's on one H200 where their targets' forwards predict 1.33x.
KERNEL_PROFILE_METHODS=${KERNEL_PROFILE_METHODS:-byol,simclr,moco,vicreg,dino,barlowtwins,simsiam}
KERNEL_PROFILE_ARGS=${KERNEL_PROFILE_ARGS:-}  # e.g. "--batch-size 16 --warmup 1 --timed 1 --steps 1 --device cpu"
KERNEL_PROFILE_S=${KERNEL_PROFILE_S:-60}  # its timeout; PLAN=accuracy-long keeps it free while a profile is due
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # ssl_core, uninstalled on a bare machine
PY=${PYTHON:-$(command -v python3 || command -v python)}
started=$(date +%s)
results=/tmp/gpu-session-results
rm -rf "$results" && mkdir -p "$results" "$OUT"

left() { echo $((BUDGET_S - ($(date +%s) - started))); }
PYLIB=/tmp/gpu-session-pylib
unpack_wheels() {  # the wheels carried in $DATASETS/wheels (pytest; lightly for the side by side) into $PYLIB, once
  [ -e "$PYLIB/.unpacked" ] && return 0
  compgen -G "$DATASETS/wheels/*.whl" >/dev/null || return 1
  for wheel in "$DATASETS"/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$PYLIB"; done
  touch "$PYLIB/.unpacked"
}
have_lightly() {  # the lightly package importable from the carried wheels (unpacked into $PYLIB)
  unpack_wheels && PYTHONPATH="$PYLIB:$PYTHONPATH" "$PY" -c "import lightly" 2>/dev/null
}
pack() { tar -czf "$OUT/results.tar.gz" -C "$results" . ; }
# within_budget NAME MIN_S: caps the calling stage's $limit at the budget left (less 5 s), and announces the stage;
# false, saying so, when that leaves under MIN_S. A stage's own timeout thus ends within BUDGET_S: a short call (a
# session's leftover device time) stops each stage in time to pack what it measured, instead of being killed with it.
within_budget() {
  [ "$limit" -gt $(( $(left) - 5 )) ] && limit=$(( $(left) - 5 ))
  if [ "$limit" -lt "$2" ]; then
    echo "== $1 skipped: $(left)s left"
    return 1
  fi
  echo "== $1 (timeout ${limit}s, $(left)s left)"
}
bench() {  # bench NAME TIMEOUT_S ARGS...: one lightly_benchmark run into $results/NAME, never past BUDGET_S
  local name=$1 limit=$2
  shift 2
  within_budget "$name" 20 || return 0
  # Each stage its own checkpoints (same fingerprints otherwise), one extraction of the archive for all
  # (SESSION_DATA: another, for another archive).
  local data=${SESSION_DATA:-/tmp/gpu-session-data}
  mkdir -p "/tmp/gpu-session-work/$name/cifar10" "$data"
  ln -sfn "$data" "/tmp/gpu-session-work/$name/cifar10/data"
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" benchmarks/lightly_benchmark.py --dataset cifar10 --datasets "$DATASETS" \
    --num-workers "$WORKERS" --work-dir "/tmp/gpu-session-work/$name" --out "$results/$name" $EXTRA "$@"
  echo "== $name exit $? after $(( $(date +%s) - started ))s"
  # Each method's per-epoch log too: it holds the epochs trained before a timeout cut the run short.
  mkdir -p "$results/$name"
  for log in "/tmp/gpu-session-work/$name"/cifar10/runs/*/knn_per_epoch.json; do
    [ -e "$log" ] && cp "$log" "$results/$name/$(basename "$(dirname "$log")")-knn_per_epoch.json"
  done
  pack
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  nproc
} > "$results/machine.txt" 2>&1
cat "$results/machine.txt"

table() {
  # First a quick eager step profile (cuDNN autotuning on and off, LARS, a BYOL step; no compiling): 40 s at most.
  # SKIP_PROFILE=1 for a second call that resumes a method the first one left unfinished.
  if [ -z "${SKIP_PROFILE:-}" ]; then
    echo "== gpu-step-profile-eager ($(left)s left)"
    # shellcheck disable=SC2086
    timeout 40 "$PY" benchmarks/step_profile.py --no-compile --out "$results/gpu-step-profile-eager" $STEP_PROFILE_ARGS
    echo "== gpu-step-profile-eager exit $? (124: timed out)"
    pack
  fi
  local method="" committed=benchmarks/results/gpu-*-cifar10-${TABLE_EPOCHS}epoch
  for candidate in $TABLE_ORDER; do
    if ! compgen -G "$committed-compile-$candidate" >/dev/null && ! compgen -G "$committed-compile-step-$candidate" \
        >/dev/null && ! compgen -G "$committed-$candidate" >/dev/null; then
      method=$candidate
      break
    fi
  done
  if [ -z "$method" ]; then
    echo "== every method of TABLE_ORDER ($TABLE_ORDER) has a committed ${TABLE_EPOCHS}-epoch result"
    return
  fi
  local compile="--compile $TABLE_COMPILE" suffix=-compile
  [ "$TABLE_COMPILE" = step ] && suffix=-compile-step
  case " $TABLE_EAGER " in *" $method "*) compile="" suffix="" ;; esac
  # shellcheck disable=SC2086
  bench "gpu-cifar10-${TABLE_EPOCHS}epoch$suffix-$method" $(( $(left) - 5 )) \
    --loader device --methods "$method" --epochs "$TABLE_EPOCHS" $compile
}

accuracy() {
  local epochs=$ACCURACY_EPOCHS
  # 1. The device path as the table trains (eager: compiling costs more than it saves here).
  bench "gpu-cifar10-accuracy-device-bf16-${epochs}epoch" 150 --loader device --methods simclr --epochs "$epochs"
  local lightly_path=""
  if have_lightly; then
    lightly_path="$PYLIB:$PYTHONPATH"
  else
    echo "== no lightly: runs 2 and 4 skipped (carry its wheels in $DATASETS/wheels, benchmarks/README.md)"
  fi
  # 2. lightly's network in our engine: the only difference from 1 is the backbone.
  if [ -n "$lightly_path" ]; then
    PYTHONPATH="$lightly_path" bench "gpu-cifar10-accuracy-device-bf16-lightly-backbone-${epochs}epoch" 150 \
      --loader device --methods simclr --epochs "$epochs" --backbone lightly_resnet18_cifar
  fi
  # 3. Run 1 again with another seed: the noise every other gap is measured against.
  bench "gpu-cifar10-accuracy-device-bf16-seed1-${epochs}epoch" 150 \
    --loader device --methods simclr --epochs "$epochs" --seed 1
  # 4. lightly against ours through the same DataLoader, same backbone and initialization (6,200 images/s a side
  #    on an H200 with 14 workers: 15 epochs of 50,000 images are about 4.5 minutes for both sides).
  if [ -n "$lightly_path" ]; then
    local name="gpu-cifar10-accuracy-side-by-side-${epochs}epoch"
    local limit=$(( $(left) - 20 ))
    echo "== $name (timeout ${limit}s, $(left)s left)"
    # shellcheck disable=SC2086
    PYTHONPATH="$lightly_path" timeout "$limit" "$PY" benchmarks/lightly_side_by_side.py --methods simclr \
      --datasets "$DATASETS" --device cuda --epochs "$epochs" --batch-size 512 \
      --num-workers "$WORKERS" --profile-steps 0 --work-dir /tmp/gpu-session-side-by-side \
      --out "$results/$name" $SIDE_BY_SIDE_ARGS
    echo "== $name exit $? (124: timed out)"
    pack
  fi
  # 5. fp32 on the device path: what bf16 autocast costs in accuracy, with the time left.
  if [ "$(left)" -gt 100 ]; then
    bench "gpu-cifar10-accuracy-device-fp32-${epochs}epoch" $(( $(left) - 45 )) \
      --loader device --methods simclr --epochs "$epochs" --precision fp32
  fi
}

accuracy_long() {
  local prefix=gpu-cifar10-accuracy-long-200epoch
  if have_lightly; then
    PYTHONPATH="$PYLIB:$PYTHONPATH" bench "$prefix-lightly-backbone" "$ACCURACY_LONG_S" \
      --loader device --methods simclr --epochs 200 --backbone lightly_resnet18_cifar
  else
    echo "== no lightly: run 1 skipped (carry its wheels in $DATASETS/wheels, benchmarks/README.md)"
  fi
  local dose=/tmp/gpu-session-jpeg-q50
  if [ "$(left)" -lt 60 ]; then  # re-encoding 60,000 images is not worth a run of under 20 s
    echo "== $prefix-jpeg-q50 skipped: $(left)s left"
  elif "$PY" benchmarks/reencode_jpeg.py "$DATASETS/cifar10-jpeg.tar.gz" "$dose" --quality 50 --workers "$WORKERS" \
      > /tmp/gpu-session-reencode.log 2>&1; then
    DATASETS=$dose SESSION_DATA=/tmp/gpu-session-data-q50 bench "$prefix-jpeg-q50" "$ACCURACY_LONG_S" \
      --loader device --methods simclr --epochs 200
    local run="$results/$prefix-jpeg-q50"
    [ -d "$run" ] && cp "$dose/cifar10-jpeg.tar.gz.reencode.json" "$run/reencode.json"
  else
    echo "== re-encoding failed: run 2 skipped"; cat /tmp/gpu-session-reencode.log
  fi
  bench "$prefix-per-view" "$ACCURACY_LONG_S" --loader device --methods simclr --epochs 200 --simclr-forward per-view
  local reserve=0  # the kernel profile's time, while one is due: it answers more than a few fp32 epochs
  kernel_profile_due && reserve=$KERNEL_PROFILE_S
  if [ "$(left)" -gt $(( 85 + reserve )) ]; then  # a start-up of 30 s, and 25 s for the summary and the packing
    bench "$prefix-fp32" $(( $(left) - 25 - reserve )) --loader device --methods simclr --epochs 200 --precision fp32
  else
    echo "== fp32 skipped: $(left)s left"
  fi
  # The curves side by side, against the committed 200-epoch run's.
  "$PY" - "$results" benchmarks/results <<'PY'
import json, sys
from pathlib import Path

results, committed = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for variant in ("lightly-backbone", "jpeg-q50", "per-view", "fp32"):  # in the order they ran
    path = results / f"gpu-cifar10-accuracy-long-200epoch-{variant}" / "simclr-knn_per_epoch.json"
    if path.exists():
        runs[variant] = json.loads(path.read_text())
curves = {}
for path in sorted(committed.glob("gpu-*-cifar10-200epoch-compile-simclr/simclr-knn_per_epoch.json"))[:1]:
    curves[f"baseline: {path.parent.name} (compiled)"] = json.loads(path.read_text())
curves.update(runs)
last = max((max(map(int, curve)) for curve in runs.values()), default=0)  # the furthest epoch this call reached
epochs = sorted({*range(5, last + 1, 5), last} - {0})
lines = ["# The first epochs of 200-epoch SimCLR, kNN top-1 (PLAN=accuracy-long)", "",
         "| run | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
for name, curve in curves.items():
    cells = [f"{curve[str(e)]['knn_top1']:.3f}" if str(e) in curve else "" for e in epochs]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
out = results / "gpu-accuracy-long-summary"
out.mkdir(exist_ok=True)
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
  pack
}

distillation() {
  local name=gpu-cifar10-distillation work=/tmp/gpu-session-work/gpu-cifar10-distillation
  local limit=$(( $(left) - 45 ))  # 40 s for the cuda tests after it
  echo "== $name (timeout ${limit}s, $(left)s left)"
  mkdir -p "$work/cifar10" /tmp/gpu-session-data
  ln -sfn /tmp/gpu-session-data "$work/cifar10/data"
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" benchmarks/distillation_benchmark.py --dataset cifar10 --datasets "$DATASETS" \
    --loader device --num-workers "$WORKERS" --teacher-seconds "$DISTILL_TEACHER_S" \
    --student-seconds "$DISTILL_STUDENT_S" --onnx-seconds 3 --work-dir "$work" --out "$results/$name" $DISTILL_ARGS
  echo "== $name exit $? after $(( $(date +%s) - started ))s"
  # Every model's per-epoch log (the probes' too): they hold the epochs trained before a timeout cut the run short.
  mkdir -p "$results/$name"
  for log in "$work"/cifar10/*/runs/*/knn_per_epoch.json; do
    [ -e "$log" ] && cp "$log" "$results/$name/$(basename "$(dirname "$(dirname "$(dirname "$log")")")")-knn_per_epoch.json"
  done
  pack
}

speed() {
  echo "== gpu-step-profile ($(left)s left)"
  timeout 150 "$PY" benchmarks/step_profile.py --out "$results/gpu-step-profile" $STEP_PROFILE_ARGS
  pack
  [ -n "${SKIP_PIL:-}" ] || bench gpu-cifar10-pil-1epoch 110 --loader pil --methods simclr --epochs 1
  bench gpu-cifar10-device-2epoch 200 --loader device --methods all --epochs 2
  bench gpu-cifar10-device-compile-2epoch 100 --loader device --methods simclr --epochs 2 --compile

  # The long run: as many epochs as fit in the time left, eager or compiled, whichever stages 3 and 4
  # show to be faster in their steady state (last epoch's training plus its kNN, and compilation once).
  read -r epochs compile_flag < <("$PY" - "$results" "$(left)" <<'PY'
import json, sys
from pathlib import Path

def simclr(stage):
    path = Path(sys.argv[1]) / stage / "results.json"
    return {r["method"]: r for r in json.loads(path.read_text())["results"]}["simclr"]

def plan(run, flag):
    """(epochs that fit, flag) from a 2-epoch run: its last epoch's cost, and the first's extra (compiling)."""
    # The last epoch's own clocks: a compiled run's first epoch and first kNN evaluation also compile
    # (on one H200, 27.6 s and 8.4 s against 1.7 s and 0.3 s after), and its mean would count that every epoch.
    first, last = run["per_epoch"][0], run["per_epoch"][-1]
    per_epoch = last["train_seconds"] + last["eval_seconds"]
    once = max(first["train_seconds"] + first["eval_seconds"] - per_epoch, 0)
    # 40 s for start-up (decoding, random-init evaluation) and saving; 10% margin.
    return max(0, int(((int(sys.argv[2]) - 40) * 0.9 - once) / per_epoch)), flag

plans = []
for stage, flag in (("gpu-cifar10-device-2epoch", "-"), ("gpu-cifar10-device-compile-2epoch", "--compile")):
    try:
        plans.append(plan(simclr(stage), flag))
    except Exception as error:  # that stage failed: not a candidate
        print(f"{stage}: {error!r}", file=sys.stderr)
print(*max(plans, default=(0, "-")))
PY
  )
  [ "$compile_flag" = "-" ] && compile_flag=""
  if [ "${epochs:-0}" -gt 0 ]; then
    bench "gpu-cifar10-device-simclr-${epochs}epoch${compile_flag:+-compile}" $(( $(left) - 5 )) \
      --loader device --methods simclr --epochs "$epochs" $compile_flag
  fi
}

compile_step() {
  local reserve=0  # the eager kernel profile's time, while one is due
  kernel_profile_due && reserve=$KERNEL_PROFILE_S
  bench gpu-cifar10-device-compile-step-2epoch 150 --loader device --methods byol --epochs 2 --compile step
  bench gpu-cifar10-device-compile-step-cudagraphs-2epoch 150 --loader device --methods byol --epochs 2 \
    --compile step --compile-mode reduce-overhead
  kernel_profile_run gpu-kernel-profile-compile-step 90 --methods byol,simclr --compile step
  # The faster of 1 and 2 by BYOL's second epoch (the first one compiles) for the other methods.
  local mode
  mode=$("$PY" - "$results" <<'PY'
import json, sys
from pathlib import Path

seconds = {}
for stage, mode in (("gpu-cifar10-device-compile-step-2epoch", "default"),
                    ("gpu-cifar10-device-compile-step-cudagraphs-2epoch", "reduce-overhead")):
    try:
        byol = {r["method"]: r for r in json.loads((Path(sys.argv[1]) / stage / "results.json").read_text())["results"]}
        seconds[mode] = byol["byol"]["per_epoch"][-1]["train_seconds"]
    except Exception as error:  # that stage failed or was cut short: not a candidate
        print(f"{stage}: {error!r}", file=sys.stderr)
print(min(seconds, key=seconds.get) if seconds else "default")
PY
  )
  # Into the faster stage's folder, beside BYOL's row (a run of the same setup adds its methods to --out).
  local stage=gpu-cifar10-device-compile-step-2epoch
  [ "$mode" = reduce-overhead ] && stage=gpu-cifar10-device-compile-step-cudagraphs-2epoch
  local limit=$(( $(left) - reserve - 10 ))
  if [ "$limit" -ge 60 ]; then
    bench "$stage" "$limit" --loader device --methods "$COMPILE_STEP_METHODS" --epochs 2 --compile step \
      --compile-mode "$mode"
  else
    echo "== $COMPILE_STEP_METHODS skipped: $(left)s left"
  fi
}

kernel_profile_due() {  # once per engine: until a profile is committed; always after a change (PLAN=speed)
  [ "$PLAN" = speed ] || ! compgen -G "benchmarks/results/gpu-*-kernel-profile" >/dev/null
}

kernel_profile_run() {  # kernel_profile_run NAME MAX_S ARGS...: one kernel_profile.py run into $results/NAME
  local name=$1 limit=$2
  shift 2
  within_budget "$name" 25 || return 0
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" benchmarks/kernel_profile.py --out "$results/$name" "$@" $KERNEL_PROFILE_ARGS
  echo "== $name exit $? (124: timed out; the methods before it are kept)"
  pack
}

kernel_profile() {  # where each method's eager step spends the device's time
  kernel_profile_due || return 0
  kernel_profile_run gpu-kernel-profile "$KERNEL_PROFILE_S" --methods "$KERNEL_PROFILE_METHODS"
}

cuda_tests() {
  # Last, with whatever time the plan left: the tests CI cannot run (tests/ssl_core/test_cuda.py and the
  # placement and probe tests marked cuda), on this machine's torch. Their report comes back as gpu-cuda-tests/pytest.txt.
  local limit=$(( $(left) - 5 ))
  if [ "$limit" -lt 35 ]; then
    echo "== cuda tests skipped: ${limit}s left"
    return
  fi
  if ! "$PY" -c "import pytest" 2>/dev/null && ! unpack_wheels; then
    echo "== cuda tests skipped: no pytest here and no wheels in $DATASETS/wheels"
    return
  fi
  echo "== cuda tests (timeout ${limit}s)"
  local report="$results/gpu-cuda-tests/pytest.txt"  # a gpu-<name> folder, unpacked like the benchmarks'
  mkdir -p "$(dirname "$report")"
  PYTHONPATH="$PYLIB:$PYTHONPATH" timeout "$limit" "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider \
    tests/ssl_core/test_cuda.py tests/ssl_core/test_device_data.py tests/ssl_core/test_linear_probe.py \
    > "$report" 2>&1
  echo "== cuda tests exit $? (0: all passed, 124: timed out)"
  tail -n 15 "$report"
  pack
}

if [ "$PLAN" = auto ]; then
  if ! compgen -G "benchmarks/results/gpu-*-accuracy-device-*" >/dev/null; then PLAN=accuracy
  elif ! compgen -G "benchmarks/results/gpu-*-accuracy-long-*" >/dev/null; then PLAN=accuracy-long
  elif ! compgen -G "benchmarks/results/gpu-*-device-compile-step-2epoch" >/dev/null; then PLAN=compile
  elif ! compgen -G "benchmarks/results/gpu-*-cifar10-distillation" >/dev/null; then PLAN=distillation
  else PLAN=table; fi
  echo "== PLAN=auto: $PLAN"
fi
case "$PLAN" in
  accuracy) accuracy ;;
  accuracy-long) accuracy_long ;;
  distillation) distillation ;;
  table) table ;;
  speed) speed ;;
  compile) compile_step ;;
esac
kernel_profile
cuda_tests
echo "done after $(( $(date +%s) - started ))s"
