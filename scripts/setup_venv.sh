#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment of one dependency stack.
#   STACK=modern (default: torch 2.14.1) or STACK=pinned (audiocraft's own torch 2.1.0 stack)
#   VENV=path    (default: .venv for modern, .venv-pinned for pinned)
#   PROJECT=no   only the AudioCraft environment (the stack, audiocraft and what it imports),
#                without this project and its tools: what a user already has (the wheel test)
# Re-running is cheap: nothing is installed while the requirement files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${STACK:-modern}
case "$STACK" in modern) default_venv=.venv ;; pinned) default_venv=.venv-pinned ;;
  *) echo "setup_venv: unknown STACK=$STACK (modern or pinned)" >&2; exit 2 ;; esac
VENV=${VENV:-$default_venv}
PROJECT=${PROJECT:-yes}
PYTHON=${PYTHON:-python3}

if [ "$PROJECT" = yes ]; then
  reqs=(requirements/common.txt requirements/runtime.txt requirements/launchers.txt
        requirements/lora.txt requirements/melody.txt requirements/test.txt
        requirements/lint.txt)
else
  reqs=(requirements/common.txt requirements/runtime.txt)
fi
inputs=("${reqs[@]}" "requirements/$STACK.txt" "requirements/$STACK.lock" pyproject.toml
        scripts/setup_venv.sh)
stamp=$( (echo "$PROJECT"; cat "${inputs[@]}") | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$stamp" ]; then
  exit 0
fi
echo "setup_venv: building $VENV for the $STACK stack (a few minutes on first use)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
# The lock pins every transitive version that was verified together.
"${pip[@]}" install -c "requirements/$STACK.lock" -r "requirements/$STACK.txt" \
  "${reqs[@]/#/-r}" 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
# audiocraft's own pins (av==11.0.0, gradio, torchtext...) do not install on Python 3.11.
"${pip[@]}" install --no-deps audiocraft==1.3.0 2> >(grep -v "^WARNING: Location" >&2)
if [ "$PROJECT" = yes ]; then
  "${pip[@]}" install --no-deps -e . 2> >(grep -v "^WARNING: Location" >&2)
fi
echo "$stamp" > "$VENV/.setup-stamp"
echo "setup_venv: $VENV ready" >&2
