#!/usr/bin/env bash
# Installs what modelship needs on a fresh Debian/Ubuntu machine (as root), idempotently:
# the system packages (Docker engine, Compose, registry, debootstrap tool, htpasswd, Node/npm for Azurite, git)
# and .venv from the pinned requirements.txt. A second run with nothing to do takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in dockerd:docker.io docker-registry:docker-registry mmdebstrap:mmdebstrap htpasswd:apache2-utils \
            docker-compose:docker-compose npm:npm git:git; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is rebuilt only when requirements.txt changes (its sha256 is stamped inside the venv).
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "creating .venv from requirements.txt (about a minute)…"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
