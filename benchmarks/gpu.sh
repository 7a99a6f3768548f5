#!/usr/bin/env bash
# The full-size benchmark on one NVIDIA GPU, sized for an H200 to finish in under 8 minutes: 224 px, bfloat16,
# with the Keras 3 peer. Five runs, each under its own time limit and each saving after every case, so a slow
# compile costs only what follows it, most important first:
#   1. ResNet-50, batch 256, cases a, d, b, c: the targets (training >= 3,000 img/s, inference >= 10,000 img/s);
#   2. ResNet-50, batch 256, case f end to end on 1,024 JPEGs (flowers17 where present, else generated), raced
#      against the forward: from a pack, from JPEG decoded in CPU worker processes, and from JPEG with
#      `--decode gpu` (nvImageCodec; recorded as absent, with the reason, where it cannot run); and case e, the
#      loader on this host's cores;
#   3. the mobile models, MobileNetV2 and EfficientNet-Lite0, batch 256, cases a, b (the PyTorch peer is a CPU
#      one, so it is off here);
#   4. VGG-16, batch 128, cases a-d;
#   5. ResNet-50 inference at batch 1024, where a bigger batch fills the GPU better.
# (g, the probes, is CPU work: benchmarks/probe_speed.py.) Writes gpu_h200*.json and .md into
# benchmarks/results (or $BENCH_OUT); extra flags go to every benchmarks.run.
#
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
OUT=${BENCH_OUT:-benchmarks/results}

ready() {
  "$PY" - <<'PY' 2>/dev/null
import jax, keras  # noqa: F401
assert jax.default_backend() == "gpu", jax.default_backend()
PY
}

if ! ready; then
  echo "installing .[cuda,bench] (jax with CUDA 12, keras)" >&2
  "$PY" -m pip install -q -e '.[cuda,bench]'
  ready || { echo "error: JAX sees no GPU after installing .[cuda,bench]" >&2; exit 2; }
fi
# --decode gpu's extra (nvImageCodec, nvJPEG); without it case f records jpeg_gpu as absent and says why.
"$PY" -c 'import nvidia.nvimgcodec' 2>/dev/null || "$PY" -m pip install -q -e '.[gpu-decode]' ||
  echo "warning: .[gpu-decode] did not install; case f's jpeg_gpu will be absent" >&2
"$PY" -c 'import jax; print(jax.__version__, jax.devices())'

status=0
bench() {  # bench SECONDS NAME FLAGS...
  local limit=$1 name=$2
  shift 2
  timeout "$limit" "$PY" -m benchmarks.run --image-size 224 --dtype bfloat16 --repeats 20 \
    --out "$OUT/$name.json" --overwrite "$@" || { echo "warning: $name ended with status $?" >&2; status=1; }
}
bench 170 gpu_h200 --models resnet50 --batch-size 256 --cases a,d,b,c "$@"
bench 140 gpu_h200_dump --models resnet50 --batch-size 256 --cases f,e --images 1024 --repeats 5 "$@"
bench 60 gpu_h200_mobile --models mobilenet_v2,efficientnet_lite0 --batch-size 256 --cases a,b --no-torch "$@"
bench 60 gpu_h200_vgg16 --models vgg16 --batch-size 128 --cases a,b,c,d "$@"
bench 45 gpu_h200_resnet50_b1024 --models resnet50 --batch-size 1024 --cases a "$@"
exit $status
