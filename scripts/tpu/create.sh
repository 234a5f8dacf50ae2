#!/usr/bin/env bash
# Creates a TPU VM (a single host, e.g. v4-8) or a pod slice (several hosts, e.g. v4-32).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: create.sh --name NAME --zone ZONE --project PROJECT --accelerator-type TYPE
                 [--version RUNTIME] [--spot | --preemptible] [--queued] [--dry-run]

  --accelerator-type  v4-N or v5p-N (N TensorCores, 2 per chip: v4-8 = 4 chips on one host,
                      v4-32 = 16 chips on 4 hosts), v5litepod-N or v6e-N (N chips)
  --version           TPU runtime image; default by generation: v4 tpu-ubuntu2204-base,
                      v5p v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
  --spot, --preemptible  cheaper capacity that can be taken back (preemption)
  --queued            request through a queued resource (waits until the slice is ACTIVE)
  --dry-run           print the commands instead of running them
USAGE
}

while (($#)); do
  case $1 in
    --accelerator-type) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --spot | --preemptible) CAPACITY=$1; shift ;;
    --queued) QUEUED=1; shift ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
check_accelerator
tpu_create
