#!/usr/bin/env bash
# Spark GPU discovery script: prints the CUDA device indexes this executor may use as
#   {"name": "gpu", "addresses": ["0", "1"]}
# Spark runs it at executor start (spark.executor.resource.gpu.discoveryScript).
# The indexes are what neardup passes to cudaSetDevice, so they are relative to
# CUDA_VISIBLE_DEVICES where the cluster manager sets it.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-discovery.sh: nvidia-smi not found; this node has no NVIDIA driver" >&2
  exit 1
fi
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
count=$(printf '%s\n' "$indexes" | grep -c . || true)
if [ "$count" -eq 0 ]; then
  echo "gpu-discovery.sh: nvidia-smi lists no GPUs" >&2
  exit 1
fi
# With CUDA_VISIBLE_DEVICES set, CUDA renumbers the visible GPUs 0..n-1.
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  count=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
fi
addresses=$(seq -s '","' 0 $((count - 1)))
printf '{"name": "gpu", "addresses": ["%s"]}\n' "$addresses"
