# shellcheck shell=bash
# Sourced by the GPU scripts: install the wheels carried in .whl/ (the lent machine has no
# network; see the device notes in docs/gpu-results.md) and put them and this checkout on PYTHONPATH.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
