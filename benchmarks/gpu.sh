#!/usr/bin/env bash
# The full-size benchmark on one NVIDIA GPU, sized for an H200 to finish in under 8 minutes: 224 px, bfloat16,
# with the Keras 3 peer. Three runs, each under its own time limit and each saving after every case, so a slow
# compile costs only what follows it, most important first:
#   1. ResNet-50, batch 256, cases a, d, b, c: the targets (training >= 3,000 img/s, inference >= 10,000 img/s);
#   2. VGG-16, batch 128, cases a-f on 1,024 generated JPEGs (f: research features end to end, e: the loader on
#      this host's cores);
#   3. ResNet-50 inference at batch 1024, where a bigger batch fills the GPU better.
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
"$PY" -c 'import jax; print(jax.__version__, jax.devices())'

status=0
bench() {  # bench SECONDS NAME FLAGS...
  local limit=$1 name=$2
  shift 2
  timeout "$limit" "$PY" -m benchmarks.run --image-size 224 --dtype bfloat16 --repeats 20 \
    --out "$OUT/$name.json" --overwrite "$@" || { echo "warning: $name ended with status $?" >&2; status=1; }
}
bench 200 gpu_h200 --models resnet50 --batch-size 256 --cases a,d,b,c "$@"
bench 160 gpu_h200_vgg16 --models vgg16 --batch-size 128 --cases a,b,c,d,e,f --images 1024 "$@"
bench 100 gpu_h200_resnet50_b1024 --models resnet50 --batch-size 1024 --cases a "$@"
exit $status
