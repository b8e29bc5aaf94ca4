#!/usr/bin/env bash
# Every GPU measurement the speed and reproduction pages wait for, as one command for a session that
# is lent a GPU (the `device` tool: 15 minutes of device time, 10 minutes a command). The cheap
# checks go first and the paper-scale reproduction last, each under its own time limit, so that a
# slow step costs its own result only. The GPU machine has torch, timm and transformers but not
# ../shared, so the offline data travels in an ignored folder:
#
#   here:  mkdir -p .device_data && cp -r ../shared/data/. .device_data/ && echo /.device_data/ >> .git/info/exclude
#   there: run(command="bash benchmarks/gpu_session.sh", carry=[".device_data"], timeout_s=600)
#
# The results files and the log come back in $OUT; copy the JSON files into benchmarks/results.
set -uo pipefail
out=${OUT:-/tmp/gpu_session}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 LMC_CACHE_DIR=/tmp/lmc_cache
export LMC_DATA_DIR=${LMC_DATA_DIR:-$PWD/.device_data}
python=${PYTHON:-python3}

step() {  # step SECONDS COMMAND...: run COMMAND under a time limit, its output into the log
    local limit=$1
    shift
    echo "== $* (at most $limit s)" | tee -a "$out/log.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/log.txt"
    echo "== exit status ${PIPESTATUS[0]}" | tee -a "$out/log.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/log.txt"
step 60 $python -m pytest -q -p no:cacheprovider tests/test_cuda.py
step 80 $python benchmarks/barrier_strategies.py --device cuda --repeats 3
step 100 $python benchmarks/alignment_speed.py --device cuda
step 50 $python benchmarks/learned_speed.py --device cuda --checkpoints
step 240 $python -m lmc_lib.book.reproduce gpt2-shakespeare-bpe --scale paper --pairs 1 --device cuda --out "$out"
cp benchmarks/results/*-cuda.json "$out"/ 2>/dev/null
ls -l "$out"
