#!/usr/bin/env bash
# The device check for one GPU (H100/H200), prepared to run in one go within a few minutes:
#   bash benchmarks/gpu_check.sh [OUTDIR]
# 1. the CUDA tests of the engine and the benchmark; 2. lb bench on HRNet-W18 / FAN (LB, T=20,
# bf16, channels-last) at batches 32..256 with the per-image fp32 baseline; 3. the 1-minute
# 720p single-face video end to end, per-frame attack (--key-interval 1) and key-frame propagation
# (--key-interval 16, the default); 4. both paths on the sample clip (passes, wall time, NME, after C2) when the
# shared data is there; 5. the 13 sample photos one at a time and attacked together (--photo-batch 13).
# Figures land in OUTDIR (default: benchmarks/out).
set -u
out=${1:-benchmarks/out}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
timeout 150 $py -m pytest -q tests/test_engine.py tests/test_bench.py tests/test_pipeline.py -k "cuda or device" 2>&1 | tail -3 | tee "$out/tests.txt"
timeout 240 $py benchmarks/bench_table.py --run gpu --save "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
timeout 300 $py benchmarks/video_e2e.py --frames 1800 --size 1280x720 --device cuda --batch-size 64 --amp bf16 --key-interval 1 16 2>&1 | tee "$out/video.txt"
clip=${LB_SHARED:-../shared}/data/video/short_hamilton_clip.mp4
if [ -f "$clip" ]; then
  timeout 300 $py benchmarks/video_e2e.py --clip "$clip" --extractor fan-demo --device cuda --batch-size 32 --amp bf16 --key-interval 1 16 --measure-every 5 --json "$out/video_clip.json" 2>&1 | tee "$out/video_clip.txt"
fi
photos=${LB_SHARED:-../shared}/data/photos
if [ -d "$photos" ]; then
  timeout 240 $py benchmarks/photo_batching.py --modes one-by-one,batched 2>&1 | tail -6 | tee "$out/photo_batching.txt"
fi
