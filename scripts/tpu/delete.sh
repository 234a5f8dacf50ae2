#!/usr/bin/env bash
# Deletes a TPU VM (or, with --queued, its queued resource and the slice in it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: delete.sh --name NAME --zone ZONE --project PROJECT [--queued] [--dry-run]

  --queued   the VM was created through a queued resource
  --dry-run  print the commands instead of running them
USAGE
}

while (($#)); do
  case $1 in
    --queued) QUEUED=1; shift ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
tpu_delete
