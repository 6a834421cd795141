"""Data-parallel training over two processes (jax.distributed on localhost, gloo collectives).

Two launch/train.py processes with one CPU device each, sharing a work directory, must train the
same parameters as one process with two (forced host) devices.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lagcl_jax import inference
from lagcl_jax import train

import synthetic
from test_train import REPO, history, run_python

_TIMEOUT_S = 180


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(args: list[str], num_processes: int = 2) -> list[subprocess.CompletedProcess]:
  """Runs `python args... --coordinator_address=... --process_id=i` once per process, each on one
  CPU device, all on the loopback interface."""
  address = f"127.0.0.1:{free_port()}"
  # NPROC: spare XLA CPU threads for the scipy kernel's host callbacks (8 per device, see
  # graph.host_callbacks_can_deadlock).
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", NPROC="8",
             JAX_COORDINATOR_BIND_ADDRESS=address)
  procs = [subprocess.Popen(
      [sys.executable, *args, f"--coordinator_address={address}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(num_processes)]
  results = []
  for proc in procs:
    try:
      stdout, stderr = proc.communicate(timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for other in procs:
        other.kill()
      stdout, stderr = proc.communicate()
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
  return results


_PROBE = """
import sys
import jax
import numpy as np
flags = dict(arg[2:].split("=") for arg in sys.argv[1:])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(flags["coordinator_address"], int(flags["num_processes"]),
                           int(flags["process_id"]))
total = jax.pmap(lambda x: jax.lax.psum(x, "i"), "i", devices=jax.devices())(np.ones((1,)))
assert float(total[0]) == 2.0
"""


def skip_unless_distributed_cpu_works():
  """Skips the test when two processes cannot even psum over gloo on this machine."""
  failed = [r for r in run_processes(["-c", _PROBE]) if r.returncode]
  if failed:
    pytest.skip(f"jax.distributed with gloo CPU collectives unavailable:\n"
                f"{failed[0].stderr[-1500:]}")


def test_two_processes_match_two_devices_in_one_process(tmp_path):
  paths = synthetic.write_paper_files(str(tmp_path))
  # Group InfoNCE and the scipy kernel (host callbacks under a multi-process pmap).
  config = synthetic.tiny_config(paths, groups=True, num_epochs=2, propagation_kernel="scipy",
                                 num_devices=0)
  args = ["launch/train.py", *synthetic.flag_args(config)]
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"

  results = run_processes(args + [f"--workdir={multi}"])
  if any(r.returncode for r in results):
    skip_unless_distributed_cpu_works()
    failed = next(r for r in results if r.returncode)
    pytest.fail(f"a training process failed (rc {failed.returncode}):\n{failed.stderr[-4000:]}")
  for result in results:  # Not each process training the whole batch on its own.
    assert "Training on 2 devices (2 processes), propagation sharded." in result.stderr
  run_python(args + [f"--workdir={single}"],
             {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "NPROC": "16"})

  got, expected = inference.load_run(str(multi), "latest"), inference.load_run(str(single),
                                                                               "latest")
  assert got.progress["global_step"] == expected.progress["global_step"] > 0
  for name, value in expected.params.items():
    np.testing.assert_allclose(np.asarray(got.params[name]), np.asarray(value), atol=1e-5,
                               err_msg=name)
  initial = train.create_train_state(expected.setup).params
  assert np.max(np.abs(np.asarray(initial["user_embedding"]) -
                       np.asarray(expected.params["user_embedding"]))) > 1e-3  # It trained.

  # Process 0 wrote the run's files, with the same records.
  for name in ("flags.txt", "config.json", "final_metrics.json", "recommendations.tsv",
               "training_curve.png"):
    assert (multi / name).is_file(), name
  for got_record, expected_record in zip(history(multi), history(single), strict=True):
    for name, value in expected_record.items():
      if not name.endswith("/seconds"):
        assert got_record[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
  assert (json.loads((multi / "final_metrics.json").read_text()) ==
          pytest.approx(json.loads((single / "final_metrics.json").read_text())))
