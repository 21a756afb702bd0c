#!/usr/bin/env bash
# The CUDA checks of unet-train on one GPU, in one go (about 8 minutes on an H100/H200):
#   1. the machine: GPU, driver, torch, CUDA, cuDNN;
#   2. the tests marked `gpu` (bf16 and fp16 training, compile, the sync-free NaN skip, tiled
#      prediction against the CPU, DeviceAugment, torchrun with NCCL);
#   3. scripts/benchmark.py at 512x512, base 64, batch 8, with compile: images/s, peak memory, the
#      share of the card's measured bf16 conv3x3 throughput, and whether the data path keeps up;
#   4. a time-boxed `experiment=isbi_paper` training on the real ISBI 2012 slices, then unet-eval.
# Each stage has its own time limit and the later ones run even if an earlier one fails.
#
#   UNET_TRAIN_ISBI_ROOT=/path/to/isbi2012 OUT=gpu-check bash scripts/gpu_check.sh
#   QUICK=1 bash scripts/gpu_check.sh      # a CPU dry run of the same commands, tiny sizes (a minute)
# TESTS="-k tiled", BENCH="--no-ablation" and COMPILE=0 make a shorter rerun.
set -u -o pipefail
OUT=${OUT:-gpu-check}
ISBI=${UNET_TRAIN_ISBI_ROOT:-../shared/data/isbi2012}
TRAIN_S=${TRAIN_S:-75}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 UNET_TRAIN_ISBI_ROOT=$ISBI
mkdir -p "$OUT"
work=$(mktemp -d)
if [[ ${QUICK:-0} == 1 ]]; then
  bench=(--device cpu --quick --compile --no-memory)
  train=(trainer=cpu model.base_channels=8 data.num_workers=2 trainer.max_epochs=1 data.samples_per_epoch=8)
else
  bench=(--device cuda --widths 64 --size 512 --batch 8 --steps 5 --repeats 3)
  [[ ${COMPILE:-1} == 1 ]] && bench+=(--compile)
  train=(trainer.max_epochs=30)
fi

stage() { echo; echo "== $1 ($((SECONDS))s)"; }

stage "machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
  "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda,
    'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name() if c else 'no GPU', 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$OUT/machine.txt"

stage "tests marked gpu"
timeout 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="-ra" ${TESTS:-} tests/test_cuda.py tests/engine/test_faults.py 2>&1 | tee "$OUT/tests.log"

stage "benchmark"
timeout 260 "$PY" scripts/benchmark.py "${bench[@]}" ${BENCH:-} --isbi-root "$ISBI" --json "$OUT/benchmark.json" 2>&1 \
  | grep -v "repeat .* done" | tee "$OUT/benchmark.log"

stage "ISBI 2012, experiment=isbi_paper for ${TRAIN_S}s"
timeout $((TRAIN_S + 60)) "$PY" -m unet_train.train experiment=isbi_paper "data.root=$ISBI" trainer.progress=never \
  "trainer.max_time=$TRAIN_S" "${train[@]}" "hydra.run.dir=$work/isbi" 2>&1 | tee "$OUT/isbi_train.log" | tail -n 25
cp "$work/isbi/metrics.json" "$OUT/isbi_metrics.json" 2>/dev/null

stage "unet-eval of best.pt"
timeout 90 "$PY" -m unet_train.evaluate "ckpt=$work/isbi/checkpoints/best.pt" save_predictions=false \
  "hydra.run.dir=$work/eval" 2>&1 | tee "$OUT/isbi_eval.log" | tail -n 20
stage "done"
