#!/usr/bin/env bash
# The GPU half of issue 11's benchmark, prepared for a session that is lent a device machine
# (BUILD.md, "GPU check"). Two steps:
#
#   tools/device_benchmark.sh prepare
#       Here: the wheels the device image lacks (jraph) into .whl/ and the paper's ML-1M split into
#       .devicedata/ml-1m/ (both ignored by git; about 13 MB). DATA_DIR overrides the split's
#       folder (default ../shared/data/ml-1m).
#   tools/device_benchmark.sh run [benchmark flags...]
#       There, with .whl and .devicedata carried: launch/benchmark.py on ML-1M LAGCL for the `auto`
#       kernel (segment_sum on GPU) and for `bcoo` (cuSPARSE), whole epochs, JSON and logs in
#       $OUT. Extra flags go to both runs (e.g. --max_steps=50 to cut the time).
#
# PYTHON overrides the interpreter (default python3, the device image's).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
data=.devicedata/ml-1m

case "${1:-}" in
  prepare)
    source_dir=${DATA_DIR:-../shared/data/ml-1m}
    mkdir -p .whl "$data"
    install -m 644 "$source_dir"/{train.txt,test.txt,user_group.txt,item_group.txt,movies.dat,users.dat} \
      "$data"/
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl jraph==0.0.6.dev0
    ls -la .whl "$data"
    ;;
  run)
    shift
    : "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi -L || true
    "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
    for kernel in auto bcoo; do
      "$python" launch/benchmark.py --flagfile=configs/ml1m_lagcl.cfg \
        --train_file="$data/train.txt" --test_file="$data/test.txt" --metadata_dir="$data" \
        --user_group_file="$data/user_group.txt" --item_group_file="$data/item_group.txt" \
        --propagation_kernel="$kernel" --max_steps=0 --device_steps=0 \
        --output="$OUT/bench_$kernel.json" "$@" 2>&1 | tee "$OUT/bench_$kernel.log"
    done
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
