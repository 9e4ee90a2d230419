#!/usr/bin/env bash
# Installs what modelship needs on a fresh Debian/Ubuntu machine (as root), idempotently:
# the system packages (Docker engine, Compose, registry, debootstrap tool and eatmydata, htpasswd, Node/npm for
# Azurite, git; with --test, Chromium)
# and .venv from the pinned requirements.txt. A second run with nothing to do takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# --test: also what only the test suite needs (Chromium, for the Airflow UI pages tested in a real browser);
# `make up` leaves it out, so a first run does not wait for a browser it never starts.
packages=(dockerd:docker.io docker-registry:docker-registry mmdebstrap:mmdebstrap eatmydata:eatmydata
          htpasswd:apache2-utils docker-compose:docker-compose npm:npm git:git)
[ "${1:-}" = --test ] && packages+=(chromium:chromium)
missing=()
for pair in "${packages[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# uv builds the venv: from PyPI through its own cache (~/.cache/uv), so another clone on this machine links
# its packages from there in seconds instead of pip's minutes. It is installed once per machine into
# ~/.cache/modelship (a pinned version, from PyPI); a `uv` already on PATH is used as it is. Where it cannot
# be had, pip builds the venv as before.
UV_VERSION=0.13.9
uv_binary() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  local home="${XDG_CACHE_HOME:-$HOME/.cache}/modelship/uv-$UV_VERSION"
  if [ ! -x "$home/bin/uv" ]; then
    rm -rf "$home.tmp"
    if python3 -m venv "$home.tmp" && "$home.tmp/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" \
        >/dev/null 2>&1; then
      rm -rf "$home" && mv "$home.tmp" "$home"  # bin/uv is a native binary: the move does not break it
    else
      rm -rf "$home.tmp"
      return 0
    fi
  fi
  echo "$home/bin/uv"
}

# The venv is rebuilt only when requirements.txt changes (its sha256 is stamped inside the venv).
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  uv=$(uv_binary)
  rm -rf .venv
  if [ -n "$uv" ]; then
    echo "creating .venv from requirements.txt with uv (seconds once ~/.cache/uv has the packages)…"
    # --seed: pip in the venv too (the wheelhouse and the app's test environment use it); the system's python3;
    # --native-tls: this host's CA bundle, as pip uses it.
    UV_PYTHON_DOWNLOADS=never "$uv" venv -q --seed --python "$(command -v python3)" .venv
    "$uv" pip install -q --native-tls --python .venv/bin/python -r requirements.txt
    "$uv" pip install -q --native-tls --python .venv/bin/python --no-deps -e .
  else
    echo "creating .venv from requirements.txt with pip (about two minutes)…"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  fi
  echo "$want" > "$stamp"
fi
