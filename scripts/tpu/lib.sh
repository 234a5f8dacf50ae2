# shellcheck shell=bash
# Shared helpers of the TPU VM scripts (sourced, not run): argument checks, --dry-run, and one
# function per step. Every gcloud command goes through `run_cmd`, which prints it under --dry-run.

REMOTE_CHECKOUT=jaxthink  # the jaxthink checkout on every worker, relative to the home directory
RUN_DIR_KEY=output_dir    # the eval config key that names the run directory

DRY_RUN=0 NAME="" ZONE="" PROJECT=""
ACCELERATOR="" VERSION="" CAPACITY="" QUEUED=0
REPO="" REF=main LOCAL_TREE=""
CONFIG="" RUN_DIR="" LOCAL_DIR=runs SETS=()
MODEL_HUB="" MODEL_DIR=""

die() {  # a usage error: the message, then where to find help
  printf '%s: error: %s\n' "${0##*/}" "$1" >&2
  printf "Run '%s --help' for usage.\n" "${0##*/}" >&2
  exit 2
}

quote() {  # one word, quoted only when a shell needs it (as Python's shlex.quote does)
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

run_cmd() {  # runs a command, or under --dry-run prints it on one line, ready to copy-paste
  if ((DRY_RUN)); then
    local words=() word
    for word in "$@"; do words+=("$(quote "$word")"); done
    printf '%s\n' "${words[*]}"
  else
    "$@"
  fi
}

need_value() {  # "$@" starts with an option that takes a value
  (($# >= 2)) && [[ -n $2 && $2 != --* ]] || die "$1 needs a value."
}

# Parses the options every script takes, at the start of "$@"; sets SHIFT to the words used (the
# calling script shifts them). Returns 1 when "$1" is not one of them.
# shellcheck disable=SC2034
common_arg() {
  case $1 in
    --name) need_value "$@"; NAME=$2; SHIFT=2 ;;
    --zone) need_value "$@"; ZONE=$2; SHIFT=2 ;;
    --project) need_value "$@"; PROJECT=$2; SHIFT=2 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

check_common() {
  [[ -n $NAME ]] || die "--name is required (the TPU VM's name, e.g. jaxthink-v4)."
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name '$NAME' is not a valid TPU name: lowercase letters, digits and hyphens, starting with a letter."
  [[ -n $ZONE ]] || die "--zone is required (e.g. us-central2-b for v4)."
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' is not a zone name such as us-central2-b."
  [[ -n $PROJECT ]] || die "--project is required (your Google Cloud project id)."
}

check_accelerator() {  # v4-N and v5p-N count TensorCores (2 per chip); v5litepod-N and v6e-N chips
  [[ -n $ACCELERATOR ]] || die "--accelerator-type is required (e.g. v4-8, v4-32, v5litepod-8, v5p-8, v6e-8)."
  [[ $ACCELERATOR =~ ^(v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]] ||
    die "accelerator type '$ACCELERATOR' is malformed: use v4-N, v5p-N, v5litepod-N or v6e-N (e.g. v4-8, v4-32)."
  local generation=${BASH_REMATCH[1]} count=${BASH_REMATCH[2]}
  case $generation in
    v4 | v5p) ((count % 8 == 0)) ||
      die "accelerator type '$ACCELERATOR': $generation-N counts TensorCores in multiples of 8 ($generation-8, $generation-16, ...)." ;;
    *) [[ " 1 4 8 16 32 64 128 256 " == *" $count "* ]] ||
      die "accelerator type '$ACCELERATOR': $generation-N counts chips, one of 1, 4, 8, 16, 32, 64, 128, 256." ;;
  esac
  if [[ -z $VERSION ]]; then  # the runtime images Cloud TPU documents for each generation
    case $generation in
      v4) VERSION=tpu-ubuntu2204-base ;;
      v5p) VERSION=v2-alpha-tpuv5 ;;
      v5litepod) VERSION=v2-alpha-tpuv5-lite ;;
      v6e) VERSION=v2-alpha-tpuv6e ;;
    esac
  fi
  [[ $CAPACITY != --preemptible || $QUEUED == 0 ]] ||
    die "--preemptible does not exist for queued resources; use --spot with --queued."
}

check_install_source() {
  [[ -n $REPO || -n $LOCAL_TREE ]] || die "give the code to install: --repo URL [--ref REF] or --local-tree DIR."
  [[ -z $REPO || -z $LOCAL_TREE ]] || die "--repo and --local-tree exclude each other; give one."
  [[ -z $LOCAL_TREE ]] || git -C "$LOCAL_TREE" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    die "--local-tree '$LOCAL_TREE' is not a git checkout (its committed HEAD is what gets shipped)."
}

check_run_dir() {
  [[ -n $RUN_DIR ]] || die "--run-dir is required (the run directory, relative to the checkout on the VM)."
  [[ ! $RUN_DIR =~ (^|/)\.\.(/|$) ]] || die "--run-dir '$RUN_DIR' must not contain '..'."
}

check_run() {
  [[ -n $CONFIG ]] || die "--config is required (a config file, relative to the checkout, e.g. configs/x.yaml)."
  local set
  for set in ${SETS[@]+"${SETS[@]}"}; do
    [[ $set =~ ^[A-Za-z_][A-Za-z0-9_.]*= ]] || die "--set '$set' is not of the form key=value."
  done
  if [[ -z $RUN_DIR ]]; then  # default: one directory per config
    RUN_DIR=runs/$(basename "${CONFIG%.*}")
  fi
  check_run_dir
  check_model
}

check_model() {  # --model-hub ID [--model-dir DIR]: MODEL_DIR defaults to checkpoints/<name in ID>
  if [[ -z $MODEL_HUB ]]; then
    [[ -z $MODEL_DIR ]] || die "--model-dir needs --model-hub (the hub id to download into it)."
    return 0
  fi
  [[ $MODEL_HUB =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "--model-hub '$MODEL_HUB' is not a hub id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B."
  MODEL_DIR=${MODEL_DIR:-checkpoints/${MODEL_HUB#*/}}
  [[ ! $MODEL_DIR =~ (^|/)\.\.(/|$) ]] || die "--model-dir '$MODEL_DIR' must not contain '..'."
}

gcloud_tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ARGS... --project --zone
  run_cmd gcloud compute tpus tpu-vm "$@" --project="$PROJECT" --zone="$ZONE"
}

remote_run_dir() {  # the run directory as scp names it (relative to the home directory)
  if [[ $RUN_DIR == /* ]]; then printf '%s' "$RUN_DIR"; else printf '%s' "$REMOTE_CHECKOUT/$RUN_DIR"; fi
}

tpu_create() {
  if ((QUEUED)); then
    run_cmd gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
      --project="$PROJECT" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$VERSION" ${CAPACITY:+"$CAPACITY"}
    wait_queued
  else
    gcloud_tpu create "$NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION" ${CAPACITY:+"$CAPACITY"}
  fi
}

wait_queued() {  # polls the queued resource until its slice is ACTIVE (under --dry-run: the poll)
  local describe=(gcloud compute tpus queued-resources describe "$NAME" --project="$PROJECT"
    --zone="$ZONE" --format 'value(state.state)')
  if ((DRY_RUN)); then run_cmd "${describe[@]}"; return 0; fi
  local state
  while state=$("${describe[@]}"); [[ $state != ACTIVE ]]; do
    [[ $state != FAILED && $state != SUSPENDED ]] || { echo "queued resource $NAME is $state." >&2; return 1; }
    sleep 30
  done
}

tpu_install() {  # the code on every worker in ~/jaxthink, then pip install -e '.[tpu]'
  local dir=$REMOTE_CHECKOUT get
  if [[ -n $REPO ]]; then
    get="{ test -d $dir/.git || git clone --quiet $(quote "$REPO") $dir; }"
    get+=" && git -C $dir fetch --quiet origin $(quote "$REF")"
    get+=" && git -C $dir checkout --quiet --detach FETCH_HEAD"
  else
    local archive="${TMPDIR:-/tmp}/jaxthink-$NAME.tar.gz"
    run_cmd git -C "$LOCAL_TREE" archive --format=tar.gz --output="$archive" HEAD
    gcloud_tpu scp "$archive" "$NAME:$dir.tar.gz" --worker=all
    get="mkdir -p $dir && tar -xzf $dir.tar.gz -C $dir"
  fi
  gcloud_tpu ssh "$NAME" --worker=all --command "$get && cd $dir && python3 -m pip install -e \".[tpu]\""
}

tpu_get_model() {  # with --model-hub: the checkpoint into MODEL_DIR on every worker (a rerun
  # downloads only the files still missing)
  [[ -n $MODEL_HUB ]] || return 0
  local command="cd $REMOTE_CHECKOUT && python3 -m huggingface_hub.cli.hf download"
  command+=" $(quote "$MODEL_HUB") --local-dir $(quote "$MODEL_DIR")"
  command+=" --include '*.json' --include '*.safetensors' --include '*.jinja' --include '*.txt'"
  gcloud_tpu ssh "$NAME" --worker=all --command "$command"
}

tpu_run() {  # the eval on every worker (process 0 writes the run directory, on worker 0)
  local command set
  command="cd $REMOTE_CHECKOUT && python3 -m jaxthink.eval --config $(quote "$CONFIG")"
  command+=" --set $(quote "$RUN_DIR_KEY=$RUN_DIR")"
  if [[ -n $MODEL_HUB ]]; then command+=" --set $(quote "model.path=$MODEL_DIR")"; fi
  for set in ${SETS[@]+"${SETS[@]}"}; do command+=" --set $(quote "$set")"; done
  gcloud_tpu ssh "$NAME" --worker=all --command "$command"
}

tpu_fetch() {  # worker 0's run directory into LOCAL_DIR/<its name>
  run_cmd mkdir -p "$LOCAL_DIR"
  gcloud_tpu scp "$NAME:$(remote_run_dir)" "$LOCAL_DIR" --worker=0 --recurse
}

tpu_push() {  # a local copy of the run directory back to worker 0, so that the eval resumes
  local remote_parent
  remote_parent=$(dirname "$(remote_run_dir)")
  gcloud_tpu ssh "$NAME" --worker=0 --command "mkdir -p $(quote "$remote_parent")"
  gcloud_tpu scp "$LOCAL_DIR/$(basename "$RUN_DIR")" "$NAME:$remote_parent" --worker=0 --recurse
}

tpu_state() {  # READY, PREEMPTED, ... (empty when the VM is gone)
  gcloud_tpu describe "$NAME" --format 'value(state)' 2>/dev/null || true
}

tpu_delete() {
  if ((QUEUED)); then
    run_cmd gcloud compute tpus queued-resources delete "$NAME" --project="$PROJECT" --zone="$ZONE" --force --quiet
  else
    gcloud_tpu delete "$NAME" --quiet
  fi
}
