#!/usr/bin/env bash
# Tests of the Helm chart (charts/bosh-nats-sync) and the BOSH job templates (deploy/bosh):
# lint, values schema, Kubernetes schemas, pod invariants, the cluster mode's and callout mode's
# wiring, the freshness of the fixtures tests/sidecar.rs and tests/cluster.rs run, the rendered
# configs checked by the binary itself, and the BOSH job's callout pre-start run for real.
#
#   tests/chart/run.sh                   run the tests
#   tests/chart/run.sh --update-fixture  re-render tests/chart/fixtures/{sidecar,cluster,callout-cluster}, then test
#   tests/chart/run.sh -- -k secret      pass arguments on to pytest
#
# No helm binary and no cluster: helm-python-sdk carries Helm's Go SDK as a shared library,
# kubernetes-validate carries the Kubernetes JSON schemas. Both are installed into a venv
# cached under target/ (rebuilt when requirements.txt changes). Set BOSH_NATS_SYNC_BIN to
# the binary to check the rendered configs with it (default: target/debug/bosh-nats-sync).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CHART_TEST_VENV:-$root/target/chart-test-venv}"
python="${PYTHON:-python3}"

update=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --update-fixture) update=1 ;;
    --) shift; pytest_args+=("$@"); break ;;
    *) pytest_args+=("$1") ;;
  esac
  shift
done

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "chart tests: creating venv $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" || { echo "chart tests: FAILED to create a venv with $python" >&2; exit 1; }
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"; then
    echo "chart tests: FAILED to install from PyPI: $(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')" >&2
    rm -rf "$venv"
    exit 1
  fi
  # The SDK's native library must load here, or every test would fail obscurely.
  "$venv/bin/python" -c 'import helm_python as h; print("chart tests: helm SDK", h.helm_sdk_version())' >&2 \
    || { echo "chart tests: FAILED to load helm-python-sdk's native library" >&2; rm -rf "$venv"; exit 1; }
  echo "$want" > "$stamp"
fi

cd "$here"
# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
if [ "$update" = 1 ]; then
  "$venv/bin/python" update_fixture.py
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${pytest_args[@]}" test_chart.py test_cluster.py test_routes.py test_bosh.py
