r"""Trains and evaluates a LAGCL4Rec / XSimGCL / SimGCL / LightGCN model, or MostPop (--model).

  python launch/train.py --flagfile=configs/ml100k_lagcl.cfg --workdir=runs/ml100k_lagcl

Rerunning the same command resumes an interrupted run from its work directory; a complete run
says so and stops. A work directory holds one run: another config there stops with the
differences (use another --workdir, or --overwrite to move the old run aside), and a second
process on it stops at once. Several hosts:
run it on each with --coordinator_address=HOST:PORT (process 0's), --num_processes and
--process_id (see jax.distributed.initialize).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax

from lagcl_jax import config as config_lib
from lagcl_jax import flags as config_flags
from lagcl_jax import reporting
from lagcl_jax import train
from lagcl_jax import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (checkpoints, metrics).",
                               required=True)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Start afresh in --workdir: a run already there is moved aside to "
    "WORKDIR.old-<timestamp> (never deleted).")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: HOST:PORT of process 0; with it, jax.distributed.initialize runs first.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _COORDINATOR_ADDRESS.value:  # Before anything touches a JAX backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPU: NCCL.
    jax.distributed.initialize(coordinator_address=_COORDINATOR_ADDRESS.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
    raise app.UsageError("--num_processes/--process_id need --coordinator_address.")
  reporting.quiet_library_logs()
  config = config_flags.config_from_flags()
  try:
    config_lib.validate(config)  # Before anything is written.
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info("Config: %s", config)
  try:
    train.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                             flagfile=config_flags.flags_as_flagfile())
  except workdir_lib.WorkDirError as e:
    sys.exit(f"Error: {e}")

if __name__ == "__main__":
  app.run(main)
