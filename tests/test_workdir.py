"""Tests for lagcl_jax.workdir and how training uses it: one run per work directory (config check,
--overwrite), one process at a time (the lock), complete runs not redone, nothing rewritten
before the run is known valid, launch/evaluate.py still working after every misuse, and a run
pinned to one core."""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest

from lagcl_jax import files
from lagcl_jax import inference
from lagcl_jax import train
from lagcl_jax import workdir as workdir_lib

import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(directory) -> dict[str, tuple[int, bytes]]:
  """Every file under `directory` but the lock file: (mtime_ns, content)."""
  result = {}
  for root, _, names in os.walk(directory):
    for name in set(names) - {workdir_lib.LOCK_FILE}:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        result[os.path.relpath(path, directory)] = (os.stat(path).st_mtime_ns, f.read())
  return result


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  return synthetic.write_paper_files(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def finished(paths, tmp_path_factory):
  """A complete 2-epoch run: (config, workdir, final metrics)."""
  config = synthetic.tiny_config(paths, groups=True, num_epochs=2)
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  return config, workdir, train.train_and_evaluate(config, workdir)


def copy_run(finished, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(finished[1], workdir)
  return workdir


def assert_evaluates_to(workdir, final):
  run = inference.load_run(workdir)
  assert train.evaluate_params(run.setup, run.params) == {
      k: v for k, v in final.items() if k.startswith(("valid/", "test/"))}


def run_python(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable] + list(map(str, args)), cwd=REPO, env=env,
                        capture_output=True, text=True, **kwargs)


# --- The config check. ----------------------------------------------------------------------------


def test_config_differences_ignore_resumable_settings_and_path_spellings(paths):
  config = synthetic.tiny_config(paths, groups=True)
  relative = os.path.relpath(paths["train.txt"])
  same = config.replace(num_epochs=50, patience=3, checkpoint_every_steps=7, eval_batch_size=5,
                        train_file=relative)
  assert workdir_lib.config_differences(config, same) == []
  other = config.replace(eps=0.0, embedding_dim=16, test_file=paths["train.txt"])
  lines = workdir_lib.config_differences(config, other)
  assert [line.split(":")[0].strip() for line in lines] == ["--test_file", "--embedding_dim",
                                                             "--eps"]
  assert "16 now" in lines[1]


@pytest.mark.parametrize("change", [dict(eps=0.0, cl_weight=0.0),  # Another model (LightGCN).
                                    dict(embedding_dim=16)])  # Another shape.
def test_another_config_stops_before_anything_is_written(finished, tmp_path, change):
  config, _, final = finished
  workdir = copy_run(finished, tmp_path)
  before = snapshot(workdir)
  with pytest.raises(workdir_lib.WorkDirError, match="holds a run of another config") as error:
    train.train_and_evaluate(config.replace(**change), workdir, flagfile="--eps=0\n")
  for name in change:
    assert f"--{name}:" in str(error.value)
  assert "--workdir" in str(error.value) and "--overwrite" in str(error.value)
  assert snapshot(workdir) == before  # Not one file rewritten, none added.
  assert_evaluates_to(workdir, final)


def test_overwrite_moves_the_old_run_aside(finished, tmp_path):
  config, _, final = finished
  workdir = copy_run(finished, tmp_path)
  old_files = snapshot(workdir)
  new_config = config.replace(embedding_dim=16, num_epochs=1)
  new_final = train.train_and_evaluate(new_config, workdir, overwrite=True)
  moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
  assert len(moved) == 1
  assert {k: v[1] for k, v in snapshot(moved[0]).items()} == {
      k: v[1] for k, v in old_files.items()}
  assert_evaluates_to(str(moved[0]), final)
  assert_evaluates_to(workdir, new_final)
  assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == 1


# --- The lock. --------------------------------------------------------------------------------------


def test_a_second_run_on_a_workdir_in_use_stops_at_once(finished, tmp_path):
  config, _, final = finished
  workdir = copy_run(finished, tmp_path)
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), "w") as holder:
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("4242\n")
    holder.flush()
    before = snapshot(workdir)
    with pytest.raises(workdir_lib.WorkDirError, match=f"{workdir} is in use .*pid 4242"):
      train.train_and_evaluate(config.replace(num_epochs=3), workdir)
    with pytest.raises(workdir_lib.WorkDirError, match="in use"):
      train.train_and_evaluate(config, workdir, overwrite=True)
    assert snapshot(workdir) == before
  assert_evaluates_to(workdir, final)


def test_bad_input_fails_before_the_run_files_are_written(paths, tmp_path):
  """A typo in the data flags leaves no config behind, so the corrected command just runs."""
  workdir = str(tmp_path / "run")
  config = synthetic.tiny_config(paths, groups=True, num_epochs=1)
  with pytest.raises(FileNotFoundError, match="--train_file"):
    train.train_and_evaluate(config.replace(train_file=str(tmp_path / "typo.txt")), workdir)
  assert snapshot(workdir) == {}
  with workdir_lib.claim(workdir, config, overwrite=False):
    pass  # The corrected config claims the directory: no mismatch with the failed attempt.


def test_a_lock_left_by_a_dead_process_is_taken_over(paths, tmp_path):
  """A kill -9 leaves run.lock (with the dead pid) but no flock: the next run takes it."""
  config = synthetic.tiny_config(paths, groups=False)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lib.LOCK_FILE).write_text("999999\n")
  (workdir / ".metrics.jsonl.abc123.tmp").write_text("half")  # A killed atomic write.
  with workdir_lib.claim(str(workdir), config):
    assert (workdir / workdir_lib.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert os.listdir(workdir) == [workdir_lib.LOCK_FILE]


def test_launch_train_refuses_a_busy_or_mismatched_workdir_and_evaluate_still_works(
    finished, tmp_path):
  config, _, final = finished
  workdir = copy_run(finished, tmp_path)
  args = ["launch/train.py", *synthetic.flag_args(config), f"--workdir={workdir}"]
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), "w") as holder:
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write(f"{os.getpid()}\n")
    holder.flush()
    busy = run_python(args, timeout=300)
  assert busy.returncode != 0
  assert f"{workdir} is in use by another run (pid {os.getpid()})" in busy.stderr
  assert "Traceback" not in busy.stderr

  mismatched = run_python(args + ["--embedding_dim=16"], timeout=300)
  assert mismatched.returncode != 0
  assert "--embedding_dim: 8 in the run, 16 now" in mismatched.stderr
  assert "Traceback" not in mismatched.stderr

  evaluated = run_python(["launch/evaluate.py", f"--workdir={workdir}"], timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout) == {
      k: v for k, v in final.items() if k.startswith(("valid/", "test/"))}
  assert "orbax" not in evaluated.stderr  # Quiet logs: no library INFO lines.


# --- Complete runs. -------------------------------------------------------------------------------


def test_a_finished_run_says_so_and_rewrites_nothing(finished, tmp_path, caplog):
  config, _, final = finished
  workdir = copy_run(finished, tmp_path)
  before = snapshot(workdir)
  caplog.set_level("INFO")
  assert train.train_and_evaluate(config, workdir, flagfile="--eps=0\n") == final
  assert "is complete: it finished its 2 epochs" in caplog.text
  assert snapshot(workdir) == before

  # A raised --num_epochs continues the run.
  longer = train.train_and_evaluate(config.replace(num_epochs=3), workdir)
  assert [json.loads(line)["epoch"] for line in open(os.path.join(workdir, "metrics.jsonl"))] == [
      1, 2, 3]
  assert json.load(open(os.path.join(workdir, "final_metrics.json"))) == longer


def test_an_early_stopped_run_says_so_even_with_more_epochs(paths, tmp_path, monkeypatch,
                                                           caplog):
  config = synthetic.tiny_config(paths, groups=False, num_epochs=6, patience=1)
  original = train.evaluate_params

  def flat_validation(setup, params, splits=("valid", "test")):
    metrics = original(setup, params, splits)
    if splits == ("valid",):  # Per-epoch validation never improves after epoch 1.
      metrics["valid/ndcg@20"] = 0.5
    return metrics

  monkeypatch.setattr(train, "evaluate_params", flat_validation)
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert final["best_epoch"] == 1
  before = snapshot(workdir)
  caplog.set_level("INFO")
  assert train.train_and_evaluate(config.replace(num_epochs=10), workdir) == final
  assert "stopped early after epoch 2" in caplog.text
  assert snapshot(workdir) == before


# --- Atomic writes. -------------------------------------------------------------------------------


def test_atomic_writer_leaves_the_old_file_when_interrupted(tmp_path):
  path = tmp_path / "out.json"
  files.atomic_write_text(str(path), "old\n")
  with pytest.raises(KeyboardInterrupt):
    with files.atomic_writer(str(path)) as f:
      f.write(b"half of the new")
      raise KeyboardInterrupt()
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.json"]  # No temporary file left.
  files.atomic_write_text(str(path), "néw\n")
  assert path.read_text(encoding="utf-8") == "néw\n"
  assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# --- One core. ------------------------------------------------------------------------------------


def test_a_run_pinned_to_one_core_finishes(tmp_path):
  """Pinned to one core, XLA's CPU pool has one thread and the scipy kernel's host callback
  waited forever for a copy on it (graph.host_callbacks_can_deadlock). With this data size the
  old rule hung in the final evaluation 2 times out of 3; "auto" must now avoid it."""
  if shutil.which("taskset") is None:
    pytest.skip("taskset (util-linux) is not installed")
  paths = synthetic.write_paper_files(str(tmp_path), num_users=900, num_items=1600, per_user=8)
  config = synthetic.tiny_config(paths, groups=True, num_epochs=3, embedding_dim=64,
                                 batch_size=1024, eval_batch_size=1024,
                                 propagation_kernel="auto")
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("NPROC", None)
  result = subprocess.run(
      ["taskset", "-c", "0", sys.executable, "launch/train.py", *synthetic.flag_args(config),
       f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "final_metrics.json").exists()
  # Logs to a file (not a terminal): one line per epoch, no progress-bar fragments.
  assert "\r" not in result.stderr and "\x1b[" not in result.stderr
  assert "0%|" not in result.stderr
  assert result.stderr.count("] epoch=") == 3
