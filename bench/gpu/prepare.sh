#!/usr/bin/env bash
# Prepare, on this machine, what a lent GPU machine needs to test and benchmark o2o in one short call.
#
# The GPU image (Python 3.12, torch + CUDA, Lightning, onnx, numpy 2.x ...) lacks o2o's data and config
# stack, the simulator and the benchmark's peer. This downloads them as wheels for Python 3.12 into
# .whl/ (git-ignored through .git/info/exclude), and copies the two source-only packages (gym,
# antlr4) into .whl/pure/ for PYTHONPATH. Then, from the device tool:
#
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=540)
#
# Versions are the project venv's (.venv: constraints.txt, bench/requirements-bench.txt); the source-only
# packages come from it too.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/pure
want=(hydra-core omegaconf zarr numcodecs donfig google-crc32c gymnasium farama-notifications mujoco glfw
      pyopengl d3rlpy gym-notices structlog dataclasses-json marshmallow)
specs=()
for name in "${want[@]}"; do  # the versions the project venv runs (constraints.txt, bench requirements)
  specs+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp -r "$site/gym" "$site/antlr4" .whl/pure/
ls .whl | sed 's/^/  /'
du -sh .whl
