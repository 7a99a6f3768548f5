"""Speed benchmarks: `python -m benchmarks.run` (or `research bench`) times our forward, train steps and data path
against Keras 3 on the same backend and against the device's measured matmul peak; results go to results/."""
