#!/usr/bin/env bash
# Runs `python -m jaxthink.eval` on every worker of a TPU VM; process 0 writes the run directory
# on worker 0. Re-running resumes: the eval skips the problems the run directory already holds.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: run.sh --name NAME --zone ZONE --project PROJECT --config FILE
              [--run-dir DIR] [--set KEY=VALUE]... [--model-hub ID [--model-dir DIR]] [--dry-run]

  --config FILE    eval config, relative to the checkout on the VM (e.g. configs/x.yaml)
  --run-dir DIR    run directory, relative to the checkout (default runs/<config name>)
  --set KEY=VALUE  config override passed to the eval (repeatable)
  --model-hub ID   download the Hugging Face checkpoint ID on every worker first (skips the files
                   already there) and run the eval on it (--set model.path=DIR); gated models
                   (Llama) need `hf auth login` or HF_TOKEN on the workers
  --model-dir DIR  where, relative to the checkout (default checkpoints/<name in ID>, the path the
                   configs/study/<model>/model.yaml files name)
  --dry-run        print the commands instead of running them
USAGE
}

while (($#)); do
  case $1 in
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --run-dir) need_value "$@"; RUN_DIR=$2; shift 2 ;;
    --set) need_value "$@"; SETS+=("$2"); shift 2 ;;
    --model-hub) need_value "$@"; MODEL_HUB=$2; shift 2 ;;
    --model-dir) need_value "$@"; MODEL_DIR=$2; shift 2 ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
check_run
tpu_get_model
tpu_run
