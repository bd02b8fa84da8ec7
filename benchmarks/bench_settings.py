"""Sampling settings shared by the `shapes` benchmark scripts (run as `python benchmarks/X.py`, so this module
imports as `bench_settings`)."""

# The settings the scripts' README numbers were measured with: the `shapes` defaults until 2026-12-02 (DDPM, 25 / 25 /
# 10 steps) and its guidance until 2026-12-03 (prior and decoder 3.0). Pinned so that the documented commands keep
# measuring what the README reports when the model's defaults change.
DDPM_25 = {"sampler": "ddpm", "spacing": "uniform", "prior_steps": 25, "decoder_steps": 25, "sr_steps": 10,
           "prior_guidance": 3.0, "decoder_guidance": 3.0}
