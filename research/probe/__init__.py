"""Probes on dumped features: scikit-learn logistic regression or a JAX L-BFGS sweep (Kornblith et al. 2019), DINO's
weighted kNN and big_vision's few-shot ridge regression (JAX), with layer-wise probing of multi-tap files and the
metrics of `metrics`. `run` is the entry point; the CLI's `research probe` calls it.
"""
from research.probe.runner import METHODS, run

__all__ = ["METHODS", "run"]
