#!/usr/bin/env bash
# The full-size benchmark on one NVIDIA GPU, sized for an H200 to finish in under 8 minutes: 224 px, bfloat16,
# ResNet-50 at batch 256 and VGG-16 at batch 128, cases a-f with the Keras 3 peer (g, the probes, is CPU work:
# benchmarks/probe_speed.py). Writes benchmarks/results/gpu_h200.json and .md; extra flags go to benchmarks.run.
#
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python

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
"$PY" -c 'import jax; print(jax.devices())'

timeout 450 "$PY" -m benchmarks.run --models resnet50,vgg16 --image-size 224 --dtype bfloat16 \
  --batch-size resnet50=256,vgg16=128 --repeats 5 --cases a,b,c,d,e,f \
  --out benchmarks/results/gpu_h200.json --overwrite "$@"
