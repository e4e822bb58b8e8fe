#!/usr/bin/env bash
# Tests of the container image (Containerfile, scripts/build-image): builds it, then runs
# tests/image.rs, which exports the image's root filesystem with the container engine
# (`create` + `export`: no container runtime needed) and runs the binary from it, chrooted, as
# UID 65532 with nothing else present: --version, check-config, and one-shot passes against
# the simulated director over HTTPS with a real nats-server (docs/kubernetes.md, "Release
# build and image").
#
#   tests/image/run.sh                 build the image and run the tests
#   tests/image/run.sh -- --nocapture  pass arguments on to the test binary
#
# Needs root (chroot, switching users) and setpriv (util-linux); the container engine comes
# from scripts/container-engine (podman, installed when there is neither podman nor docker).
# cargo runs with --all-features, as scripts/test does, so their builds are shared. The image
# is tagged localhost/bosh-nats-sync:test (replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/../.."

test_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; test_args+=("$@"); break ;;
    *) echo "image tests: unknown argument '$1' (usage: tests/image/run.sh [-- TEST-ARGS])" >&2
       exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "image tests: must run as root (chroot and switching to UID 65532)" >&2
  exit 1
fi
scripts/apt-install-missing setpriv:util-linux tar:tar

CONTAINER_ENGINE=$(scripts/container-engine)
export CONTAINER_ENGINE
tag=localhost/bosh-nats-sync:test
# The previous run's image goes, so its layers do not pile up in the engine's store.
"$CONTAINER_ENGINE" rmi --force "$tag" >/dev/null 2>&1 || true
scripts/build-image --tag "$tag"

BOSH_NATS_SYNC_IMAGE=$tag cargo test --locked --all-features -p bosh-nats-sync --test image \
  -- --ignored "${test_args[@]}"
