#!/usr/bin/env bash
# Likeness set-up: install into .venv, then launch the app (default) or run the tests.
#   bash setup.sh [launch] [app.py options]   install, then start the web UI (demo model if no models)
#   bash setup.sh test [pytest options]       install with test tools and Chromium, then run the tests
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-launch}
[ $# -gt 0 ] && shift

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# Reinstall only when a requirements file changed: a relaunch should not wait on pip.
install_once() {
  local stamp=".venv/.installed-$1" files=("${@:2}")
  local digest
  digest=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    "${pip[@]}" -r "${files[0]}"
    echo "$digest" > "$stamp"
  fi
}
install_once runtime requirements.txt
if [ "$(cat .venv/.installed-vocab 2>/dev/null)" != "$(sha256sum < requirements-vocab.txt | cut -d' ' -f1)" ]; then
  "${pip[@]}" --no-deps -r requirements-vocab.txt
  sha256sum < requirements-vocab.txt | cut -d' ' -f1 > .venv/.installed-vocab
fi

# The tests in three runs: first every test without a browser or Ray on two processes (pytest-xdist, a
# file per process at a time), then the browser and Ray tests (marked `serial` in tests/conftest.py)
# one at a time, as they would be alone, then the Milvus store tests on Milvus Lite 2.4 (below). Given -n,
# -m or -p no:xdist, one plain run as asked.
#
# Milvus Lite 2.4 cannot sit beside the pinned 3.x in one environment: it goes to a folder of its own, put
# first on PYTHONPATH for a third run of the Milvus store tests, so both engines stay tested.
lite24=.venv/milvus-lite-2.4
milvus_tests=(tests/pipelines/test_approximate_stores.py tests/pipelines/test_approx_cache_wiring.py tests/pipelines/bench/test_scale.py)
install_lite24() {
  local digest
  digest=$(sha256sum < requirements-milvus-lite-2.4.txt | cut -d' ' -f1)
  if [ "$(cat "$lite24/.installed" 2>/dev/null)" != "$digest" ]; then
    rm -rf "$lite24"
    "${pip[@]}" --no-deps --target "$lite24" -r requirements-milvus-lite-2.4.txt
    echo "$digest" > "$lite24/.installed"
  fi
}

run_tests() {
  case " $* " in
    *" -n"*|*" --numprocesses"*|*" -m"*|*"no:xdist"*) exec .venv/bin/python -m pytest tests "$@" ;;
  esac
  local first=0 second=0 third=0
  echo "== tests without a browser or Ray, on two processes =="
  .venv/bin/python -m pytest tests -n 2 --dist loadfile -m "not serial" "$@" || first=$?
  echo "== browser and Ray tests, one at a time =="
  .venv/bin/python -m pytest tests -m serial "$@" || second=$?
  echo "== the Milvus store tests again, on Milvus Lite 2.4 (requirements-milvus-lite-2.4.txt) =="
  PYTHONPATH=$lite24 .venv/bin/python -m pytest "${milvus_tests[@]}" "$@" || third=$?
  # pytest's 5 is "no test selected": fine for one run (say -k matched only another), not for all.
  if [ "$first" = 5 ] && [ "$second" = 5 ] && [ "$third" = 5 ]; then return 5; fi
  for code in "$first" "$second" "$third"; do
    [ "$code" = 0 ] || [ "$code" = 5 ] || return "$code"
  done
}

case "$mode" in
  launch)
    exec .venv/bin/python app.py "$@"
    ;;
  test)
    install_once dev requirements-dev.txt requirements-scale.txt  # dev includes the scale extras (-r)
    install_lite24
    if ! command -v chromium >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's Chromium for the browser tests…"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
      else
        echo "Chromium is not installed: the browser tests will be skipped (sudo apt-get install chromium)." >&2
      fi
    fi
    run_tests "$@"
    ;;
  *)
    echo "usage: bash setup.sh [launch|test] [options]" >&2
    exit 2
    ;;
esac
