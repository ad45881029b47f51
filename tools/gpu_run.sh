#!/usr/bin/env bash
# The one prepared run on a lent GPU machine (../shared/gpu/README.md), after the onnxruntime-gpu
# wheel's parts have been carried over (.gpuwhl/) and the pure-Python peers as wheels (.whl/:
# captum, zennit; the machine's image has torch, torchvision, pytest, Pillow, matplotlib). Writes
# under $OUT: nvidia-smi.txt, gpu_check.json (tools/gpu_check.py: every method on CUDA beside the
# CPU), bench_cuda.json (tools/bench.py --device cuda: beside Captum/Zennit on the same GPU) and the
# log of tests/test_cuda.py. Each part has its own time limit, so one slow part leaves the others.
set -uo pipefail
export PYTHONUNBUFFERED=1 GNL_ONNX_CACHE=/tmp/gnl-onnx-cache OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
bash .gpuwhl/install-ort-gpu.sh || exit 1
. /tmp/site.env
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
ln -sfn "$PWD/models" /tmp/site/gnl_onnx_models  # the installed name of models/ (pyproject.toml)
export PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
timeout "${CHECK_S:-200}" python3 tools/gpu_check.py --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
timeout "${BENCH_S:-180}" python3 tools/bench.py --device cuda --models resnet50,mobilenet_v2,vgg16 --batches 1,8 \
    --steps 32 --repeat 2 --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log"
timeout "${TEST_S:-90}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
exit 0
