#!/usr/bin/env bash
# Copies a run directory from worker 0 of a TPU VM to LOCAL_DIR/<run directory's name>.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: fetch.sh --name NAME --zone ZONE --project PROJECT --run-dir DIR
                [--local-dir DIR] [--dry-run]

  --run-dir DIR    run directory on the VM, relative to the checkout (e.g. runs/x)
  --local-dir DIR  local parent directory of the copy (default runs)
  --dry-run        print the commands instead of running them
USAGE
}

while (($#)); do
  case $1 in
    --run-dir) need_value "$@"; RUN_DIR=$2; shift 2 ;;
    --local-dir) need_value "$@"; LOCAL_DIR=$2; shift 2 ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
check_run_dir
tpu_fetch
