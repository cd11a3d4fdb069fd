#!/usr/bin/env bash
# On a lent GPU machine (after bench/gpu/prepare.sh here): install the carried wheels beside the image's
# packages, then run the CUDA-only tests and the GPU benchmark. Results land in $OUT (the device tool
# brings them back): the pytest log, bench_gpu's table and JSON.
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-/tmp/o2o-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The project is its own folder (o2o.* is this checkout): import it through a link named o2o.
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/o2o
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD/.whl/pure O2O_PROGRESS=0 MUJOCO_GL=egl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, lightning; print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", lightning.__version__)' | tee -a "$OUT/gpu.txt"
# 1. The CUDA-only tests (fast path and graphs against eager, on the GPU): ~1 min.
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/policies/test_updates_per_step.py 2>&1 | tail -40 | tee "$OUT/pytest.txt"
# 2. The plain loop's CUDA graph alone (a quick sign the capture works on this machine).
timeout 60 python3 bench/plain_iql.py --steps 2000 --cuda-graph 2>&1 | tail -3 | tee "$OUT/plain_iql.txt"
# 3. The benchmark: every algorithm and variant.
timeout 420 python3 bench/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.txt" | tail -60
cp bench/results/bench_gpu-*.json "$OUT/" 2>/dev/null || true
