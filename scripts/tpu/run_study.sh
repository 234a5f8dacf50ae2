#!/usr/bin/env bash
# One eval run on a fresh TPU VM: create -> install -> run -> fetch -> delete. On failure the
# partial results are fetched and the VM is deleted (unless --keep). With --spot / --preemptible,
# a preempted VM is recreated and the run resumes from the results copied so far.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: run_study.sh --name NAME --zone ZONE --project PROJECT --accelerator-type TYPE
                    (--repo URL [--ref REF] | --local-tree DIR) --config FILE
                    [--run-dir DIR] [--set KEY=VALUE]... [--model-hub ID [--model-dir DIR]]
                    [--local-dir DIR]
                    [--version RUNTIME] [--spot | --preemptible] [--queued]
                    [--max-attempts N] [--sync-every SECONDS] [--keep] [--dry-run]

  Options of create.sh, install.sh, run.sh and fetch.sh, plus:
  --keep               leave the VM running at the end and after a failure
  --max-attempts N     runs on fresh VMs after preemption, in all (spot/preemptible; default 5)
  --sync-every SECONDS copy the run directory back this often while running, so that a
                       preempted run resumes from it (default 900 with --spot/--preemptible, else 0)
  --dry-run            print the commands of one attempt instead of running them
If LOCAL_DIR/<run directory's name> exists already, it is copied to the VM first and the run resumes.
USAGE
}

KEEP=0 MAX_ATTEMPTS=5 SYNC_EVERY="" CREATED=0 SYNC_PID=""
while (($#)); do
  case $1 in
    --accelerator-type) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --spot | --preemptible) CAPACITY=$1; shift ;;
    --queued) QUEUED=1; shift ;;
    --repo) need_value "$@"; REPO=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --local-tree) need_value "$@"; LOCAL_TREE=$2; shift 2 ;;
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --run-dir) need_value "$@"; RUN_DIR=$2; shift 2 ;;
    --set) need_value "$@"; SETS+=("$2"); shift 2 ;;
    --model-hub) need_value "$@"; MODEL_HUB=$2; shift 2 ;;
    --model-dir) need_value "$@"; MODEL_DIR=$2; shift 2 ;;
    --local-dir) need_value "$@"; LOCAL_DIR=$2; shift 2 ;;
    --max-attempts) need_value "$@"; MAX_ATTEMPTS=$2; shift 2 ;;
    --sync-every) need_value "$@"; SYNC_EVERY=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
check_accelerator
check_install_source
check_run
[[ $MAX_ATTEMPTS =~ ^[1-9][0-9]*$ ]] || die "--max-attempts '$MAX_ATTEMPTS' must be a positive integer."
if [[ -z $SYNC_EVERY ]]; then SYNC_EVERY=$([[ -n $CAPACITY ]] && echo 900 || echo 0); fi
[[ $SYNC_EVERY =~ ^[0-9]+$ ]] || die "--sync-every '$SYNC_EVERY' must be a number of seconds (0: never)."

stop_sync() {
  if [[ -n $SYNC_PID ]]; then kill "$SYNC_PID" 2>/dev/null || true; wait "$SYNC_PID" 2>/dev/null || true; fi
  SYNC_PID=""
}

start_sync() {  # a background copy of the run directory every SYNC_EVERY seconds
  if ((DRY_RUN || SYNC_EVERY == 0)); then return 0; fi
  (while sleep "$SYNC_EVERY"; do tpu_fetch >/dev/null 2>&1 || true; done) &
  SYNC_PID=$!
}

on_exit() {
  local status=$?
  stop_sync
  if ((status != 0 && CREATED && !DRY_RUN)); then
    echo "run_study: failed (exit $status); fetching what the run wrote so far." >&2
    tpu_fetch || true
    if ((KEEP)); then
      echo "run_study: --keep: $NAME is still running; delete it with delete.sh." >&2
    else
      echo "run_study: deleting $NAME." >&2
      tpu_delete || true
    fi
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

prepare() {  # a ready VM with the code, the model (--model-hub) and any results copied back so far
  tpu_create
  CREATED=1
  tpu_install
  tpu_get_model
  if [[ -d $LOCAL_DIR/$(basename "$RUN_DIR") ]]; then tpu_push; fi
}

prepare
for ((attempt = 1; ; attempt++)); do
  start_sync
  status=0
  tpu_run || status=$?
  stop_sync
  ((status != 0)) || break
  state=$(tpu_state)
  if [[ -z $CAPACITY || $state == READY ]] || ((attempt >= MAX_ATTEMPTS)); then
    echo "run_study: the eval failed (exit $status; VM state '${state:-gone}', attempt $attempt)." >&2
    exit "$status"
  fi
  echo "run_study: $NAME was preempted (state '${state:-gone}'); recreating it for attempt" \
    "$((attempt + 1)) of $MAX_ATTEMPTS." >&2
  tpu_fetch || true
  tpu_delete || true
  prepare
done
tpu_fetch
if ((!KEEP)); then
  tpu_delete
  CREATED=0
fi
