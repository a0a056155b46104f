#!/usr/bin/env bash
# What a GPU study relies on, checked and timed: release parity on the device, the inference form's
# throughput (fp32 / bf16, eager / compiled) beside the paper's Table XI, packed proxy training for
# S = 1..32 replicas, and a 20-trial study with 1, 2 and 4 workers per GPU. Prints one JSON object
# (the last line); each section's result also goes to stderr as it finishes. Under 8 minutes on one
# GPU. `--device cpu --tiny` runs every step at toy sizes (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
