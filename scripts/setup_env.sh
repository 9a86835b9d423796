#!/usr/bin/env bash
# Creates .venv (once) and installs the pinned requirements; re-installs only when requirements.txt changes.
# Source it:  source scripts/setup_env.sh
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${PYTHON:-python3}"
if [ ! -x "$_root/.venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $_root/.venv"
  "$_python" -m venv "$_root/.venv" || { echo "[setup] could not create a venv: install python3-venv" >&2; return 1 2>/dev/null || exit 1; }
fi
_stamp="$_root/.venv/.requirements.sha256"
_want="$(sha256sum "$_root/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
  echo "[setup] installing pinned requirements (first time: about a minute)"
  "$_root/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$_root/requirements.txt" \
    || { echo "[setup] pip install failed" >&2; return 1 2>/dev/null || exit 1; }
  echo "$_want" > "$_stamp"
fi
export PATH="$_root/.venv/bin:$PATH"
export MUJOCO_GL="${MUJOCO_GL:-egl}"   # headless rendering (see README: Troubleshooting)
export PYTHONUNBUFFERED=1
