#!/usr/bin/env bash
# Installs jaxthink on every worker of a TPU VM: ~/jaxthink, then pip install -e '.[tpu]'.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: install.sh --name NAME --zone ZONE --project PROJECT
                  (--repo URL [--ref REF] | --local-tree DIR) [--dry-run]

  --repo URL, --ref REF  git clone URL (or fetch, when already cloned) and check out REF
                         (branch, tag or commit; default main) on every worker
  --local-tree DIR       ship the committed HEAD of the git checkout DIR instead
  --dry-run              print the commands instead of running them
For a pod slice, run `ssh-add` with your gcloud key (~/.ssh/google_compute_engine) first.
USAGE
}

while (($#)); do
  case $1 in
    --repo) need_value "$@"; REPO=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --local-tree) need_value "$@"; LOCAL_TREE=$2; shift 2 ;;
    *) common_arg "$@" || die "unknown argument '$1'."; shift "$SHIFT" ;;
  esac
done
check_common
check_install_source
tpu_install
