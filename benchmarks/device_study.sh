#!/usr/bin/env bash
# The GPU check in one command (docs/gpu.md): install the packed wheels into a temporary site
# folder, then (a) training throughput, (b) the study at native resolution, several jobs at once
# on the one GPU, (c) a longer quality run evaluated on CamVid val (and test). Each stage has its
# own time budget and writes what it has; at most 8 files land in $OUT.
#   python -m segment.device pack --camvid <CamVid>  # here, once: .device_pack/ (wheels, CamVid, weights)
#   bash benchmarks/device_study.sh               # there, with .device_pack carried
#   bash benchmarks/device_study.sh --dry-run     # here, on the CPU: tiny sizes, a handful of images
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [[ "${1:-}" == "--dry-run" ]] && DRY=1
PACK=${PACK:-.device_pack}
PY=${PYTHON:-python3}  # the Python that has torch: python3 on the GPU machine, the test's own here
OUT=${OUT:-device_out}
WORK=$(mktemp -d)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device_log.txt"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

[[ -d "$PACK/wheels" && -d "$PACK/camvid" ]] || { say "no pack at $PACK: run python -m segment.device pack --camvid <CamVid>"; exit 1; }
PACKED=$("$PY" -c "import json; print(json.load(open('$PACK/manifest.json'))['python_version'])" 2>/dev/null)
HERE=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[[ -z "$PACKED" || "$PACKED" == "$HERE" ]] || { say "the pack holds wheels for Python $PACKED, this machine runs \
Python $HERE: pack again with python -m segment.device pack --camvid <CamVid> --python-version $HERE"; exit 1; }
SITE="$WORK/site"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$PACK"/wheels/*.whl \
  >>"$LOG" 2>&1 || { say "installing the packed wheels failed"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 SEGMENT_CACHE_DIR="$PACK" PYTHONUNBUFFERED=1
# one interpreter checks the install and names the versions (each import of torch and Lightning costs seconds)
VERSIONS=$("$PY" -c "import sys, segmentation_models_pytorch as smp, albumentations, hydra, torch, lightning
print('from the pack:', smp.__file__, file=sys.stderr)
print(torch.__version__, lightning.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
  2>>"$LOG") || { say "the packed wheels do not import"; exit 1; }
say "wheels installed into $SITE; versions (torch, Lightning, GPU): $VERSIONS"

DATA="data=camvid data.root=$PACK/camvid"
if (( DRY )); then
  SIZE="[64,96]"; BATCHES="1 2"; STEPS="--warmup 1 --steps 1 --windows 2"; TIME_A=240; TIME_B=600; TIME_C=240
  TINY="trainer.max_epochs=1 +trainer.limit_train_batches=2 +trainer.limit_val_batches=2 trainer.val_check_interval=1.0
    data.num_workers=1 data.batch_size=2"
  # the GPU run's concurrent path in small: several parts at once, two joblib jobs each
  SEEDS_A="0"; SEEDS_B="0,1"; JOBS=2; PARTS="pretraining architecture"; QUALITY_EPOCHS=1
  QUALITY_EXTRA="model.scheduler.scheduler.warmup_steps=0"  # one step cannot hold a 100-step warmup
else
  SIZE="[384,480]"; BATCHES="16 32"; STEPS="--warmup 2 --steps 3 --windows 2"; TIME_A=100; TIME_B=330; TIME_C=140
  TINY="data.num_workers=2"
  SEEDS_A="0,1,2,3,4"; SEEDS_B="0,1,2"; JOBS=4; PARTS="pretraining lr1e-3 architecture lab"; QUALITY_EPOCHS=200
  QUALITY_EXTRA=""
fi

# (a) throughput: unet_vgg, bf16, channels_last, two batch sizes, with and without torch.compile
say "(a) throughput, budget ${TIME_A}s"
timeout "$TIME_A" "$PY" benchmarks/train_throughput.py $DATA model=unet_vgg model.net.encoder_weights=hed \
  "data.image_size=$SIZE" --batch-sizes $BATCHES --compile $( (( DRY )) && echo off || echo both ) \
  --peak-size $( (( DRY )) && echo 256 || echo 8192 ) --loader-seconds $( (( DRY )) && echo 1 || echo 10 ) \
  --quick $STEPS \
  --json "$OUT/throughput.json" >>"$LOG" 2>&1 || say "(a) ended early (exit $?); throughput.json holds what it measured"

# (b) the study at native resolution: every arm and seed, several jobs at once on the one GPU
say "(b) study, budget ${TIME_B}s"
SWEEP="$WORK/study"
COMMON="$DATA data.image_size=$SIZE trainer.enable_progress_bar=false hydra.sweep.dir=$SWEEP hydra/launcher=joblib \
  hydra.launcher.n_jobs=$JOBS ~callbacks.model_checkpoint ~callbacks.last_checkpoint +trainer.enable_checkpointing=false \
  $TINY"
for part in $PARTS; do
  case $part in
    pretraining) args="experiment=compare_pretraining model=unet_scratch,unet_vgg model.optimizer.lr=1e-4 seed=$SEEDS_A" ;;
    lr1e-3) args="experiment=compare_pretraining model=unet_scratch,unet_vgg model.optimizer.lr=1e-3 seed=$SEEDS_B" ;;
    architecture) args="experiment=compare_pretraining model=unet_lab model.optimizer.lr=1e-4 seed=$SEEDS_B" ;;
    lab) args="experiment=lab_comparison protocol=lab_small,lab_vgg seed=$SEEDS_B" ;;
  esac
  timeout "$TIME_B" "$PY" train.py -m $args $COMMON >>"$WORK/study_$part.log" 2>&1 &
done
wait
"$PY" -m segment.analysis.report "$SWEEP" >>"$LOG" 2>&1 || say "(b) no report: no run finished"
[[ -f "$SWEEP/report.md" ]] && cp "$SWEEP/report.md" "$OUT/study_report.md"
[[ -f "$SWEEP/speedup_vs_threshold.png" ]] && cp "$SWEEP/speedup_vs_threshold.png" "$OUT/"
[[ -f "$SWEEP/reached_vs_epochs.png" ]] && cp "$SWEEP/reached_vs_epochs.png" "$OUT/"
(cd "$SWEEP" 2>/dev/null && tar czf "$OUT/study_runs.tar.gz" --exclude=masks --exclude=tensorboard \
  --exclude=checkpoints --exclude='*.png' . ) || say "(b) no run folders to keep"
tail -n 5 "$WORK"/study_*.log >>"$LOG" 2>/dev/null

# (c) quality: unet_vgg at native resolution with median-frequency class weights, evaluated on val (and test)
say "(c) quality, budget ${TIME_C}s"
RUN="$WORK/quality"
timeout "$TIME_C" "$PY" train.py $DATA "data.image_size=$SIZE" model=unet_vgg model.net.encoder_weights=hed \
  loss=ce_balanced scheduler=warmup_poly model.optimizer.lr=1e-3 \
  trainer.max_epochs=$QUALITY_EPOCHS "+trainer.max_time=$(printf '00:00:%02d:%02d' $(( (TIME_C - 40) / 60 )) $(( (TIME_C - 40) % 60 )))" \
  trainer.enable_progress_bar=false test_after_fit=true hydra.run.dir="$RUN" $TINY $QUALITY_EXTRA >>"$WORK/quality.log" 2>&1 \
  || say "(c) training ended early (exit $?)"
if [[ -f "$RUN/checkpoints/last.ckpt" ]]; then
  "$PY" evaluate.py ckpt_path="$RUN/checkpoints/last.ckpt" data.root="$PACK/camvid" num_sheets=0 \
    hydra.run.dir="$WORK/evaluation" >>"$LOG" 2>&1 && cp "$WORK/evaluation/metrics.json" "$OUT/quality_metrics.json" \
    && cp "$WORK/evaluation/evaluation.md" "$OUT/quality_evaluation.md"
fi
tail -n 20 "$WORK/quality.log" >>"$LOG" 2>/dev/null
say "done; $OUT holds: $(ls "$OUT" | tr '\n' ' ')"
