"""Orbax checkpoints of a run: `latest` (for resuming) and `best` (the selected model).

Each checkpoint holds the train state (parameters, optimizer state, step) and a JSON record of the
loop's progress (epoch, position in the epoch, best metric, history). Orbax writes into a
temporary folder and renames it when complete, so a checkpoint is never half-written; a folder left
by a killed save is cleaned up on the next start. Noise and negative samples are functions of
(seed, step) and (seed, epoch, step), so no RNG state needs saving beyond the step.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
  """The `latest` and `best` checkpoint series of one work directory."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._managers = {
        name: ocp.CheckpointManager(
            os.path.join(self.directory, name),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=False,
                cleanup_tmp_directories=True),
            item_names=("state", "progress"))
        for name in ("latest", "best")
    }

  def save(self, name: str, step: int, state: Any, progress: dict) -> None:
    """Saves `state` (a pytree of arrays) and `progress` (JSON) as checkpoint `name` at `step`."""
    manager = self._managers[name]
    if step in manager.all_steps():  # A resumed run redoing the step of an interrupted save.
      manager.delete(step)
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)), force=True)
    manager.wait_until_finished()

  def latest_step(self, name: str) -> Optional[int]:
    return self._managers[name].latest_step()

  def restore(self, name: str, template: Any) -> tuple[Any, dict]:
    """Restores the newest checkpoint `name` into the structure of `template`."""
    manager = self._managers[name]
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No {name!r} checkpoint under {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    return restored.state, dict(restored.progress)

  def progress(self, name: str) -> Optional[dict]:
    """The progress record of the newest checkpoint `name` (without its arrays), or None."""
    manager = self._managers[name]
    step = manager.latest_step()
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return dict(restored.progress)

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()
