#!/bin/bash
# The wheels a lent GPU machine's image lacks, for benchmarks/gpu_session.sh (its image has
# torch, numpy, msgpack and ml-dtypes, Python 3.12, CUDA 13, and no network):
#
#   bash benchmarks/gpu_wheels.sh          # pyzmq into .whl/ (git-ignored: add /.whl/ to
#                                          # .git/info/exclude, and carry it)
#   UCX=1 bash benchmarks/gpu_wheels.sh    # and the ucxx-cu13 stack, for ucx:// (~50 MB)
set -eu
DEST=${DEST:-.whl}
PY=${PY:-3.12}
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$DEST" "$@"
}
fetch pyzmq==27.3.0
if [ "${UCX:-0}" = 1 ]; then
  fetch ucxx-cu13==0.52.0 libucxx-cu13==0.52.0 'libucx-cu13>=1.19,<1.22' rmm-cu13==26.10.0 \
    librmm-cu13==26.10.0 rapids-logger==0.3.0
fi
du -sh "$DEST"
