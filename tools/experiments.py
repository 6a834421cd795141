"""Experiments: model configs ("rows") x seeds, each run by launch/train.py, then summarised.

An experiment config is a flagfile of launch/experiment.py (see configs/experiments/):

  # configs/experiments/ml100k.cfg
  --row=lightgcn: configs/ml100k_lightgcn.cfg
  --row=xsimgcl: configs/ml100k_xsimgcl.cfg
  --row=lagcl_random: configs/ml100k_lagcl.cfg --groups=random
  --row=xsimgcl_reranked: configs/ml100k_xsimgcl.cfg --llm_rerank
  --seeds=0,1,2
  --baselines=xsimgcl,lagcl_random
  --run_flags=--patience=20
  --llm_flags=--flagfile=configs/llm_ml100k.cfg

`--row=NAME: ARGS` (one line per row, in the order of the tables): NAME names the row and its
folder (letters, digits, `_`, `.`, `-`); ARGS are launch/train.py arguments, split as a shell
line: a token without a leading `--` is a model flagfile (passed as `--flagfile=PATH`), the others
are flags. `--run_flags` are appended to every row's arguments (so a command-line
`--run_flags=--num_epochs=2` shortens every run); later flags win. `--seed` and `--workdir` belong
to the runner: run (ROW, S) trains with `--seed=S --workdir=EXPERIMENT_DIR/ROW/seed_S`. Before
anything trains, the rows' flagfiles must exist and every flag name in the rows and in their
flagfiles be launch/train.py's (`check_rows`); the values are checked by train.py itself.

A row whose launch/train.py arguments give the same flag values as an earlier row's
(`effective_flags`: flagfiles expanded, the last value of each flag) shares its work directories
(training is deterministic: it is trained once), so `configs/x.cfg --eps=0.1` and `configs/x.cfg`
whose file says `--eps=0.1` train once; `finished_runs` finds the finished runs of other
experiment folders (`--reuse_runs_from`) that `plan_runs` uses instead of training them again.

LLM outputs in rows: `{llm_dir}` in a row's arguments or in `--llm_flags` stands for the last
`--llm_dir=` of `--llm_flags` (`resolve_llm_dir`), e.g. `--augment_file={llm_dir}/augment.txt`,
so one flag points the whole experiment at another LLM's outputs. With `--llm_backbone=ROW` the
runner also makes them: before the first run that needs them (a row naming `{llm_dir}`, or a
reranked row) is trained or reranked, `python launch/llm.py --stage=all LLM_FLAGS
--backbone_workdir=RUN` runs on ROW's first-seed run (profiles, augmentation candidates from that
backbone, groups, and its rerank), its output in EXPERIMENT_DIR/llm_outputs/llm.log. The LLM cache
makes a rerun of it cheap (no LLM call when nothing changed), so it runs once per invocation that
has such work left. Another model needs another `--llm_dir` (its outputs would otherwise replace
these, and runs trained on them would be reused).

A row with the token `--llm_rerank` is reranked by the LLM: after a run of it is trained,
`python launch/llm.py --stage=rerank LLM_FLAGS --backbone_workdir=RUN --rerank_dir=DIR` writes
rerank.json (valid and test metrics without and with reranking, alpha, the rerank's LLM calls and
seconds), rerank_per_user_test.npz and rerank_test.tsv into DIR = EXPERIMENT_DIR/ROW/seed_S, with
its output in rerank.log and its arguments in experiment_rerank.json. A rerank is finished when
rerank.json exists; an interrupted one is rerun, its prompts already scored coming from the LLM
cache. The tables use the reranked valid/test metrics and per-user test metrics for such a row.

Each run is a subprocess (`python launch/train.py ...`, its output in `train.log` of its work
directory), so a run is exactly what a user gets and a crash ends only that run. A run is finished
when its work directory holds `final_metrics.json`; rerunning skips finished runs, and train.py
resumes interrupted ones from their work directory. `experiment_run.json` in each work directory
records the arguments the run was started with: a run whose row changed since is an error, never
silently mixed into the tables.

The summary (`results.json`, `results.md`, `results.png` in the experiment folder) is computed
from the finished runs' files only, so rewriting it is deterministic:
- per row, mean +- sample std (ddof 1) over finished seeds of every `valid/*` and `test/*` metric
  of final_metrics.json, the best epoch, the epochs run and the seconds per training epoch
  (median of metrics.jsonl's `train/seconds`: the first epoch's includes compilation), and every
  seed's own values;
- against each baseline row, per metric of `per_user_test.npz` (arrays `user_ids` and one per
  metric, e.g. `ndcg@20`): each user's value is averaged over the seeds both rows finished (a row
  missing a seed is not compared with the baseline's mean over more seeds), users are paired by
  id, and the differences (row - baseline) get a Wilcoxon signed-rank test (scipy; zero
  differences dropped, exact for small samples without ties, else the normal approximation with
  tie correction) and a paired t-test, both two-sided;
- optionally a published table beside ours (`published_rows`) and a heatmap over two flags of
  the rows (`heatmap`).
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import typing
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import stats

from lagcl_jax import config as config_lib
from lagcl_jax import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_COMMAND = (sys.executable, os.path.join(REPO, "launch", "train.py"))
LLM_COMMAND = (sys.executable, os.path.join(REPO, "launch", "llm.py"))
RUN_FILE = "experiment_run.json"
FINAL_FILE = "final_metrics.json"
PER_USER_FILE = "per_user_test.npz"
RUNNER_FLAGS = ("seed", "workdir")
RERANK_MARKER = "--llm_rerank"  # In a row: its runs are reranked by the LLM after training.
RERANK_RUN_FILE = "experiment_rerank.json"
RERANK_FILE = "rerank.json"  # Written last by launch/llm.py --stage=rerank.
RERANK_PER_USER_FILE = "rerank_per_user_test.npz"
LLM_DIR = "{llm_dir}"  # In rows and --llm_flags: the last --llm_dir of --llm_flags.
LLM_OUTPUTS_DIR = "llm_outputs"  # EXPERIMENT_DIR/llm_outputs: the log of --llm_backbone's stage.
LLM_OUTPUTS_RUN_FILE = "experiment_llm.json"
# launch/train.py's flags besides the Config fields (lagcl_jax/flags.py) and absl's logging ones.
TRAIN_SCRIPT_FLAGS = ("flagfile", "coordinator_address", "num_processes", "process_id",
                      "verbosity", "v", "logtostderr", "alsologtostderr")
SIGNIFICANCE_LEVEL = 0.05
_ROW_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]+$")  # Not "." or "..": it names a folder.


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the tables: a name, its launch/train.py arguments, and whether its runs are
  reranked by the LLM."""
  name: str
  args: tuple[str, ...]
  rerank: bool = False
  uses_llm_outputs: bool = False  # Its arguments named {llm_dir} (see resolve_llm_dir).


@dataclasses.dataclass(frozen=True)
class Run:
  """One row with one seed: a training run in its work directory (shared by rows that train
  alike), and for a reranked row the LLM rerank of it in the row's own folder."""
  row: str
  seed: int
  workdir: str
  args: tuple[str, ...]  # launch/train.py arguments, --seed and --workdir last.
  rerank_dir: Optional[str] = None  # None: not reranked.
  rerank_args: tuple[str, ...] = ()  # launch/llm.py arguments of the rerank.
  uses_llm_outputs: bool = False  # Trains on files of the LLM's --llm_dir.

  @property
  def needs_llm(self) -> bool:
    """Training or reranking it needs the LLM's outputs."""
    return self.uses_llm_outputs or self.rerank_dir is not None


@dataclasses.dataclass(frozen=True)
class LLMOutputs:
  """The LLM stages that make an experiment's LLM outputs (`--llm_backbone`): launch/llm.py
  --stage=all on the backbone row's first-seed run."""
  backbone: Run
  folder: str  # EXPERIMENT_DIR/llm_outputs: its arguments and log.
  args: tuple[str, ...]  # launch/llm.py arguments.


def parse_args(text: str, where: str) -> tuple[str, ...]:
  """Shell-split train.py arguments; bare tokens become `--flagfile=TOKEN`."""
  try:
    tokens = shlex.split(text)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  args = tuple(t if t.startswith("--") else f"--flagfile={t}" for t in tokens)
  for arg in args:
    name = arg[2:].split("=", 1)[0]
    if name in RUNNER_FLAGS:
      raise ValueError(f"{where}: {arg!r}: the runner sets --seed (from --seeds) and --workdir")
  return args


def parse_row(spec: str) -> Row:
  """`NAME: ARGS` (see the module docstring) as a Row; the token --llm_rerank marks a reranked
  row."""
  where = f"--row={spec!r}"
  name, sep, rest = spec.partition(":")
  name = name.strip()
  if not sep or not _ROW_NAME.match(name):
    raise ValueError(f"{where}: expected NAME: ARGS with a NAME of letters, digits, _ . -")
  args = parse_args(rest, where)
  rerank = RERANK_MARKER in args
  args = tuple(arg for arg in args if arg != RERANK_MARKER)
  if not args:
    raise ValueError(f"{where}: no model flagfile or flags after the name")
  return Row(name, args, rerank)


def resolve_llm_dir(rows: Sequence[Row], llm_flags: Sequence[str]
                    ) -> tuple[list[Row], tuple[str, ...]]:
  """Rows and LLM flags with `{llm_dir}` replaced by the last --llm_dir= of llm_flags (rows that
  named it marked `uses_llm_outputs`); ValueError when it is used and no --llm_dir is given."""
  llm_dirs = [arg.split("=", 1)[1] for arg in llm_flags if arg.startswith("--llm_dir=")]
  users = [row.name for row in rows if any(LLM_DIR in arg for arg in row.args)]
  if (users or any(LLM_DIR in arg for arg in llm_flags)) and not llm_dirs:
    where = f"rows {', '.join(users)}" if users else "--llm_flags"
    raise ValueError(f"{where} name {LLM_DIR} but --llm_flags gives no --llm_dir=FOLDER")
  if not llm_dirs:
    return list(rows), tuple(llm_flags)
  expand = lambda args: tuple(arg.replace(LLM_DIR, llm_dirs[-1]) for arg in args)
  rows = [dataclasses.replace(row, args=expand(row.args), uses_llm_outputs=row.name in users)
          for row in rows]
  return rows, expand(llm_flags)


def flag_names(*settings: type, script_flags: Sequence[str] = TRAIN_SCRIPT_FLAGS) -> set[str]:
  """Every flag a launch script made from these settings dataclasses knows (booleans also as
  --noNAME)."""
  types = {}
  for kind in settings:
    types.update(typing.get_type_hints(kind))
  booleans = {f"no{name}" for name, kind in types.items() if kind is bool}
  return set(types) | booleans | set(script_flags)


def train_flag_names() -> set[str]:
  """Every flag launch/train.py knows."""
  return flag_names(config_lib.Config)


def llm_flag_names() -> set[str]:
  """Every flag launch/llm.py knows."""
  from lagcl_jax.llm import options  # pylint: disable=g-import-not-at-top
  return flag_names(config_lib.Config, options.LLMOptions,
                    script_flags=(*TRAIN_SCRIPT_FLAGS, "stage"))


def check_flags(where: str, args: Sequence[str], known: set[str], script: str,
                seen: tuple[str, ...] = ()) -> list[str]:
  """Problems of launch-script arguments: not a --flag, a flag the script does not know, a
  missing flagfile; flagfiles are read (nested too) as absl reads them."""
  problems = []
  for arg in args:
    name, _, value = arg[2:].partition("=")
    if not arg.startswith("--"):
      problems.append(f"{where}: {arg!r}: expected a --flag")
    elif name not in known:
      problems.append(f"{where}: {arg!r}: {script} has no flag --{name}")
    elif name == "flagfile" and not os.path.isfile(value):
      problems.append(f"{where}: flagfile {value} not found (from {os.getcwd()})")
    elif name == "flagfile" and value not in seen:
      with open(value) as f:
        for number, line in enumerate(f, start=1):
          if line.strip() and not line.lstrip().startswith(("#", "//")):
            problems += check_flags(f"{where}: {value}:{number}", [line.strip()], known, script,
                                    seen + (value,))
  return problems


def check_rows(rows: Sequence[Row], baselines: Sequence[str] = (),
               run_flags: Sequence[str] = (), llm_flags: Sequence[str] = (),
               llm_backbone: Optional[str] = None) -> list[str]:
  """Problems of the rows, run flags and LLM flags (duplicate names, unknown baselines, missing
  flagfiles, flags launch/train.py or launch/llm.py does not know, reranked rows without LLM
  flags, an --llm_backbone row that is unknown or not before the rows needing the LLM); [] if
  none."""
  problems = []
  names = [row.name for row in rows]
  if not rows:
    problems.append("no --row given")
  problems += [f"--row: name {n!r} used twice" for n in sorted(set(names)) if names.count(n) > 1]
  problems += [f"--baselines: {b!r} is not a row name (rows: {', '.join(names)})"
               for b in baselines if b not in names]
  known = train_flag_names()
  for row in rows:
    problems += check_flags(f"row {row.name}", row.args, known, "launch/train.py")
  problems += check_flags("--run_flags", run_flags, known, "launch/train.py")
  reranked = [row.name for row in rows if row.rerank]
  if reranked and not llm_flags:
    problems.append(f"rows {', '.join(reranked)} are reranked ({RERANK_MARKER}) but no "
                    "--llm_flags give the LLM (e.g. --llm_flags=--flagfile=configs/llm_ml100k.cfg)")
  if llm_flags:
    problems += check_flags("--llm_flags", llm_flags, llm_flag_names(), "launch/llm.py")
  if llm_backbone is not None:
    if llm_backbone not in names:
      return problems + [f"--llm_backbone: {llm_backbone!r} is not a row name"]
    problems += [f"--llm_backbone={llm_backbone}: row {row.name} needs the LLM's outputs, so "
                 "it must come after the backbone row"
                 for row in rows[:names.index(llm_backbone) + 1]
                 if row.uses_llm_outputs or row.rerank]
    if not llm_flags:
      problems.append(f"--llm_backbone={llm_backbone}: no --llm_flags give the LLM")
  return problems


def _without_workdir(args: Sequence[str]) -> tuple[str, ...]:
  return tuple(arg for arg in args if not arg.startswith("--workdir="))


def _expanded(args: Sequence[str], seen: tuple[str, ...] = ()) -> list[str]:
  """The arguments with each readable --flagfile replaced by its lines, in order (nested too)."""
  out = []
  for arg in args:
    path = arg[len("--flagfile="):] if arg.startswith("--flagfile=") else None
    if path is None or path in seen or not os.path.isfile(path):
      out.append(arg)
      continue
    with open(path) as f:
      lines = [line.strip() for line in f]
    out += _expanded([line for line in lines if line and not line.startswith(("#", "//"))],
                     seen + (path,))
  return out


def effective_flags(args: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """What arguments (launch/train.py's, or a rerank's launch/llm.py's) set, up to spelling:
  flagfiles expanded, each flag's last `--name=value` kept, sorted by name; `--workdir` left out.
  A bare `--name` (a boolean) is kept as written, so `--x` and `--x=true` count as different."""
  values = {}
  for arg in _expanded(_without_workdir(args)):
    name, sep, value = arg.partition("=")
    values[name] = value if sep else None
  return tuple(sorted((name, value) for name, value in values.items()))


def finished_runs(experiment_dirs: Sequence[str]
                  ) -> dict[tuple[tuple[str, str], ...], tuple[str, tuple[str, ...]]]:
  """{effective_flags of the arguments: (work directory, its recorded arguments without
  --workdir)} of the finished runs in other experiments' folders (EXPERIMENT_DIR/ROW/seed_S; a
  missing folder has none), for `plan_runs` to reuse."""
  found = {}
  for experiment_dir in experiment_dirs:
    for row in sorted(os.listdir(experiment_dir)) if os.path.isdir(experiment_dir) else []:
      row_dir = os.path.join(experiment_dir, row)
      for seed_dir in sorted(os.listdir(row_dir)) if os.path.isdir(row_dir) else []:
        workdir = os.path.join(row_dir, seed_dir)
        args = recorded_args(workdir, RUN_FILE)
        if args is not None and os.path.isfile(os.path.join(workdir, FINAL_FILE)):
          found.setdefault(effective_flags(args), (workdir, _without_workdir(args)))
  return found


def plan_runs(rows: Sequence[Row], seeds: Sequence[int], experiment_dir: str,
              run_flags: Sequence[str] = (), llm_flags: Sequence[str] = (),
              reusable: Optional[dict] = None) -> list[Run]:
  """Every (row, seed) run, rows in order, seeds in order within a row.

  A run trains in EXPERIMENT_DIR/ROW/seed_S, unless an earlier row trains with the same
  effective flags (then it shares that row's work directory and arguments: training is
  deterministic) or `reusable` (see `finished_runs`) holds a finished run with them. A reranked
  row's rerank goes to its own EXPERIMENT_DIR/ROW/seed_S.
  """
  runs, trainings = [], dict(reusable or {})
  for row in rows:
    for seed in seeds:
      own = os.path.join(experiment_dir, row.name, f"seed_{seed}")
      train_args = (*row.args, *run_flags, f"--seed={seed}")
      workdir, train_args = trainings.setdefault(effective_flags(train_args), (own, train_args))
      rerank_args = (("--stage=rerank", *llm_flags, f"--backbone_workdir={workdir}",
                      f"--rerank_dir={own}") if row.rerank else ())
      runs.append(Run(row.name, seed, workdir, (*train_args, f"--workdir={workdir}"),
                      own if row.rerank else None, rerank_args, row.uses_llm_outputs))
  return runs


def plan_llm_outputs(runs: Sequence[Run], backbone_row: str, experiment_dir: str,
                     llm_flags: Sequence[str]) -> LLMOutputs:
  """The LLM stages of `--llm_backbone`: on the backbone row's first-seed run."""
  backbone = next(run for run in runs if run.row == backbone_row)
  return LLMOutputs(backbone, os.path.join(experiment_dir, LLM_OUTPUTS_DIR),
                    ("--stage=all", *llm_flags, f"--backbone_workdir={backbone.workdir}"))


def shard(runs: Sequence[Run], shard_index: int, num_shards: int) -> list[Run]:
  """The runs of one machine: every num_shards-th work directory from shard_index (rows spread
  evenly; runs sharing a work directory stay on one machine)."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard_index={shard_index}, --num_shards={num_shards}: expected "
                     "0 <= shard_index < num_shards")
  workdirs = list(dict.fromkeys(run.workdir for run in runs))
  mine = set(workdirs[shard_index::num_shards])
  return [run for run in runs if run.workdir in mine]


def is_finished(run: Run) -> bool:
  """Trained: the work directory holds final_metrics.json."""
  return os.path.isfile(os.path.join(run.workdir, FINAL_FILE))


def is_reranked(run: Run) -> bool:
  return run.rerank_dir is not None and os.path.isfile(os.path.join(run.rerank_dir, RERANK_FILE))


def status(run: Run) -> str:
  """finished | interrupted (started, not finished: train.py resumes it) | new."""
  if is_finished(run):
    return "finished"
  return "interrupted" if os.path.isfile(os.path.join(run.workdir, RUN_FILE)) else "new"


def rerank_status(run: Run) -> str:
  """reranked | interrupted (started: the LLM cache makes the rerun cheap) | new."""
  if is_reranked(run):
    return "reranked"
  started = os.path.isfile(os.path.join(run.rerank_dir, RERANK_RUN_FILE))
  return "interrupted" if started else "new"


def recorded_args(folder: str, record_file: str = RUN_FILE) -> Optional[list[str]]:
  """The arguments a run (or rerank) in `folder` was started with (None if it never started)."""
  path = os.path.join(folder, record_file)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)["args"]


def changed_runs(runs: Sequence[Run]) -> list[str]:
  """Messages for the runs and reranks started with arguments that set other values
  (`effective_flags`) than their row now gives; a respelling of the same values is no change."""
  steps = [(run.workdir, RUN_FILE, run.args) for run in runs]
  steps += [(run.rerank_dir, RERANK_RUN_FILE, run.rerank_args) for run in runs if run.rerank_dir]
  messages = []
  for folder, record_file, args in dict.fromkeys(steps):
    recorded = recorded_args(folder, record_file)
    if recorded is not None and effective_flags(recorded) != effective_flags(args):
      messages.append(f"{folder}: started with {shlex.join(recorded)}, the config now gives "
                      f"{shlex.join(args)}; restore the row, or remove the folder or use "
                      "another --experiment_dir to rerun it")
  return messages


def _execute(folder: str, record_file: str, log_name: str, command: Sequence[str],
             args: Sequence[str]) -> int:
  """Records `args` in folder/record_file, runs command + args with its output appended to
  folder/log_name; returns the exit status."""
  os.makedirs(folder, exist_ok=True)
  reporting.write_json(os.path.join(folder, record_file), {"args": list(args)})
  with open(os.path.join(folder, log_name), "a") as log:
    log.write(f"$ {shlex.join([*command, *args])}\n")
    log.flush()
    return subprocess.run([*command, *args], stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def execute(run: Run, train_command: Sequence[str] = TRAIN_COMMAND) -> int:
  """Runs (or resumes) one run to its end; its output is appended to train.log. Returns the
  exit status."""
  return _execute(run.workdir, RUN_FILE, "train.log", train_command, run.args)


def execute_rerank(run: Run, llm_command: Sequence[str] = LLM_COMMAND) -> int:
  """Reranks a trained run with the LLM (launch/llm.py --stage=rerank; prompts already in the
  LLM cache are not run again); its output is appended to rerank.log. Returns the exit status."""
  return _execute(run.rerank_dir, RERANK_RUN_FILE, "rerank.log", llm_command, run.rerank_args)


def log_tail(path: str, lines: int = 5) -> str:
  if not os.path.isfile(path):
    return ""
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def make_llm_outputs(llm_outputs: LLMOutputs, llm_command: Sequence[str] = LLM_COMMAND,
                     log: Callable[[str], None] = print) -> bool:
  """Runs the LLM stages of `--llm_backbone` (see the module docstring); whether they succeeded."""
  if not is_finished(llm_outputs.backbone):
    log(f"LLM outputs: the backbone run {llm_outputs.backbone.workdir} is not finished (with "
        "--num_shards, run the shard that trains it first)")
    return False
  log(f"LLM outputs: launch/llm.py --stage=all on {llm_outputs.backbone.workdir}")
  code = _execute(llm_outputs.folder, LLM_OUTPUTS_RUN_FILE, "llm.log", llm_command,
                  llm_outputs.args)
  log_path = os.path.join(llm_outputs.folder, "llm.log")
  if code != 0:
    log(f"LLM outputs: FAILED (exit status {code}); end of {log_path}:\n{log_tail(log_path)}")
  else:
    log(f"LLM outputs: done (stage lines in {log_path})")
  return code == 0


def run_all(runs: Sequence[Run], train_command: Sequence[str] = TRAIN_COMMAND,
            log: Callable[[str], None] = print,
            llm_command: Sequence[str] = LLM_COMMAND,
            llm_outputs: Optional[LLMOutputs] = None) -> list[Run]:
  """Trains every unfinished run in order (a work directory shared by several rows once), then
  reranks it if its row is reranked; goes on after failures; returns the failed runs. With
  `llm_outputs`, the LLM stages run (once) before the first run that needs them and has work
  left; if they fail, those runs fail unrun."""
  failed, trained_by = [], {}
  llm_ready = None  # None: not run yet in this invocation; then whether it succeeded.
  for number, run in enumerate(runs, start=1):
    prefix = f"[{number}/{len(runs)}] {run.row} seed {run.seed}"
    state = status(run)
    work_left = state != "finished" or (run.rerank_dir is not None and not is_reranked(run))
    if llm_outputs is not None and run.needs_llm and work_left:
      if llm_ready is None:
        llm_ready = make_llm_outputs(llm_outputs, llm_command, log)
      if not llm_ready:
        log(f"{prefix}: not run, the LLM outputs it needs failed")
        failed.append(run)
        continue
    if run.workdir in trained_by:
      log(f"{prefix}: same training as {trained_by[run.workdir]} ({run.workdir})")
    elif state == "finished":
      log(f"{prefix}: finished before, skipped")
    else:
      log(f"{prefix}: {'resuming' if state == 'interrupted' else 'training'} in {run.workdir}")
      code = execute(run, train_command)
      if code == 0 and is_finished(run):
        log(f"{prefix}: done")
      else:
        log(f"{prefix}: FAILED (exit status {code}); end of {run.workdir}/train.log:\n"
            f"{log_tail(os.path.join(run.workdir, 'train.log'))}")
    trained_by.setdefault(run.workdir, f"{run.row} seed {run.seed}")
    if not is_finished(run):
      failed.append(run)
      continue
    if run.rerank_dir is None:
      continue
    if is_reranked(run):
      log(f"{prefix}: reranked before, skipped")
      continue
    log(f"{prefix}: LLM reranking {run.workdir} into {run.rerank_dir}")
    code = execute_rerank(run, llm_command)
    if code == 0 and is_reranked(run):
      llm = _read_json(os.path.join(run.rerank_dir, RERANK_FILE)).get("llm", {})
      log(f"{prefix}: reranked ({llm.get('llm_calls')} LLM calls, "
          f"{llm.get('wall_seconds', float('nan')):.1f} s)")
    else:
      failed.append(run)
      log(f"{prefix}: rerank FAILED (exit status {code}); end of {run.rerank_dir}/rerank.log:\n"
          f"{log_tail(os.path.join(run.rerank_dir, 'rerank.log'))}")
  return failed


# --- Summary ---------------------------------------------------------------------------------


def _read_json(path: str) -> Any:
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e


def run_record(run: Run) -> dict[str, float]:
  """A finished run's numbers: its valid/* and test/* metrics, best_epoch, epochs and
  seconds_per_epoch (median of metrics.jsonl's train/seconds)."""
  final = _read_json(os.path.join(run.workdir, FINAL_FILE))
  record = {k: float(v) for k, v in final.items()
            if (k.startswith(("valid/", "test/")) or k == "best_epoch")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
  history_path = os.path.join(run.workdir, "metrics.jsonl")
  history = []
  if os.path.isfile(history_path):
    with open(history_path) as f:
      history = [json.loads(line) for line in f if line.strip()]
  if not history:  # Nothing trained (MostPop): no epochs, so no best epoch either.
    record.pop("best_epoch", None)
    return record
  seconds = [r["train/seconds"] for r in history if "train/seconds" in r]
  record["epochs"] = float(len(history))
  if seconds:  # The median: the first epoch's time includes compilation.
    record["seconds_per_epoch"] = float(np.median(seconds))
  return record


def rerank_record(run: Run) -> dict[str, float]:
  """A reranked run's numbers: the training run's record with its valid/* and test/* metrics
  replaced by the reranked ones (cut-offs up to --rerank_top_n only), plus rerank/alpha and the
  rerank's LLM work: rerank/llm_calls, rerank/prompts, rerank/llm_seconds (wall) and
  rerank/llm_cpu_seconds."""
  rerank = _read_json(os.path.join(run.rerank_dir, RERANK_FILE))
  record = {k: v for k, v in run_record(run).items() if not k.startswith(("valid/", "test/"))}
  for split in ("valid", "test"):
    record.update({f"{split}/{k}": float(v) for k, v in rerank[split]["reranked"].items()})
  llm = rerank.get("llm", {})
  record["rerank/alpha"] = float(rerank["alpha"])
  for key, name in (("llm_calls", "llm_calls"), ("prompts", "prompts"),
                    ("wall_seconds", "llm_seconds"), ("cpu_seconds", "llm_cpu_seconds")):
    if key in llm:
      record[f"rerank/{name}"] = float(llm[key])
  return record


def mean_std(values: Sequence[float]) -> dict[str, Optional[float]]:
  """Mean and sample standard deviation (ddof 1; None for fewer than 2 values)."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if values.size > 1 else None}


def summarise_row(records: dict[int, dict[str, float]]) -> dict[str, Any]:
  """Mean +- std over seeds of every number the seeds have in common."""
  keys = sorted(set.intersection(*(set(r) for r in records.values()))) if records else []
  return {"seeds_finished": len(records),
          "per_seed": {str(seed): records[seed] for seed in sorted(records)},
          "metrics": {k: mean_std([records[s][k] for s in sorted(records)]) for k in keys}}


def read_per_user(path: str) -> dict[str, dict[str, float]]:
  """`per_user_test.npz` as {metric: {user id: value}}."""
  with np.load(path, allow_pickle=False) as data:
    if "user_ids" not in data:
      raise ValueError(f"{path}: no `user_ids` array")
    users = [str(u) for u in data["user_ids"]]
    if len(set(users)) != len(users):
      raise ValueError(f"{path}: repeated user ids")
    table = {}
    for key in sorted(data.files):
      if key == "user_ids":
        continue
      values = data[key]
      if values.shape != (len(users),):
        raise ValueError(f"{path}: array {key!r} has shape {values.shape}, expected "
                         f"({len(users)},) like user_ids")
      table[key] = dict(zip(users, values.astype(np.float64).tolist()))
  return table


def seed_averaged(tables: Sequence[dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
  """Each user's metric averaged over seeds, for the users every seed evaluated."""
  if not tables or any(metric not in t for t in tables):
    return {}
  users = set.intersection(*(set(t[metric]) for t in tables))
  return {u: float(np.mean([t[metric][u] for t in tables])) for u in users}


def paired_test(row: dict[str, float], baseline: dict[str, float]) -> dict[str, Any]:
  """Wilcoxon signed-rank and paired t-test of row - baseline over the users both have."""
  users = sorted(set(row) & set(baseline))
  if not users:
    return {"num_users": 0}
  a = np.array([row[u] for u in users])
  b = np.array([baseline[u] for u in users])
  difference = a - b
  result = {"num_users": len(users), "row_mean": float(a.mean()), "baseline_mean": float(b.mean()),
            "mean_difference": float(difference.mean()), "wilcoxon_p": None, "ttest_p": None}
  if np.any(difference != 0):
    result["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    if len(users) > 1 and np.ptp(difference) > 0:
      result["ttest_p"] = float(stats.ttest_rel(a, b).pvalue)
  return result


def significance(rows: Sequence[str], baseline: str, tables: dict[str, dict[int, dict]],
                 metrics: Sequence[str]) -> dict[str, dict[str, dict]]:
  """{row: {metric: paired_test + its seeds}} of every row but the baseline, from per-user
  tables ({seed: `read_per_user` table} per row). Only the seeds both rows finished are used,
  so a row that lacks a seed is not compared with the baseline's average over more seeds."""
  result = {}
  for row in rows:
    seeds = sorted(set(tables.get(row, {})) & set(tables.get(baseline, {})))
    if row == baseline or not seeds:
      continue
    result[row] = {m: {**paired_test(seed_averaged([tables[row][s] for s in seeds], m),
                                     seed_averaged([tables[baseline][s] for s in seeds], m)),
                       "seeds": seeds} for m in metrics}
  return result


def collect(rows: Sequence[Row], runs: Sequence[Run], baselines: Sequence[str],
            significance_metrics: Sequence[str]) -> dict[str, Any]:
  """The experiment's results from the finished runs' files (see the module docstring)."""
  records = {row.name: {} for row in rows}
  tables = {row.name: {} for row in rows}
  missing, without_per_user = [], []
  for run in runs:
    if not is_finished(run) or (run.rerank_dir is not None and not is_reranked(run)):
      missing.append(f"{run.row}/seed_{run.seed}"
                     + (" (not reranked)" if is_finished(run) else ""))
      continue
    if run.rerank_dir is None:
      records[run.row][run.seed] = run_record(run)
      path = os.path.join(run.workdir, PER_USER_FILE)
    else:
      records[run.row][run.seed] = rerank_record(run)
      path = os.path.join(run.rerank_dir, RERANK_PER_USER_FILE)
    if os.path.isfile(path):
      tables[run.row][run.seed] = read_per_user(path)
    else:
      without_per_user.append(f"{run.row}/seed_{run.seed}")
  names = [row.name for row in rows]
  return {
      "rows": names,
      "seeds": sorted({run.seed for run in runs}),
      "baselines": list(baselines),
      "summary": {name: summarise_row(records[name]) for name in names},
      "significance": {b: significance(names, b, tables, significance_metrics)
                       for b in baselines},
      "unfinished_runs": missing,
      "runs_without_per_user_file": without_per_user,
      "row_args": {row.name: list(row.args) for row in rows},
      "reranked_rows": [row.name for row in rows if row.rerank],
      "run_dirs": {f"{run.row}/seed_{run.seed}": run.workdir for run in runs},
  }


# --- Published numbers -----------------------------------------------------------------------


def published_rows(path: str, results: dict[str, Any]) -> dict[str, Any]:
  """Our mean beside each number of a published table (JSON: {"source", "protocol", "rows":
  {our row name: {metric key: value}}}), with the relative difference (ours / published - 1)."""
  published = _read_json(path)
  if not isinstance(published.get("rows"), dict):
    raise ValueError(f"{path}: expected a \"rows\" object {{row: {{metric: value}}}}")
  comparison = []
  for row in sorted(published["rows"]):
    for metric, value in sorted(published["rows"][row].items()):
      ours = results["summary"].get(row, {}).get("metrics", {}).get(metric)
      comparison.append({
          "row": row, "metric": metric, "published": value,
          "ours": ours,
          "relative": None if ours is None else ours["mean"] / value - 1})
  return {"source": published.get("source", path), "protocol": published.get("protocol", ""),
          "comparison": comparison}


# --- Rendering -------------------------------------------------------------------------------


def _number(value: Optional[float], digits: int = 4) -> str:
  return "—" if value is None else f"{value:.{digits}f}"


def _p_value(p: Optional[float]) -> str:
  if p is None:
    return "—"
  return f"{p:.3g}" + (" *" if p < SIGNIFICANCE_LEVEL else "")


def _mean_std(stat: Optional[dict], digits: int = 4) -> str:
  if stat is None:
    return "—"
  if stat["std"] is None:
    return _number(stat["mean"], digits)
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _digits(key: str) -> int:
  """Decimals of a number in the tables: counts 1, seconds 2, metrics 4."""
  if key in ("best_epoch", "epochs") or key.endswith("num_users"):
    return 1
  return 2 if "seconds" in key else 4


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(line) + " |" for line in lines])


def render_markdown(name: str, results: dict[str, Any], main_metrics: Sequence[str]) -> str:
  """results.md: main table, significance, per-seed values, every metric, published numbers."""
  rows, summary = results["rows"], results["summary"]
  seeds = ", ".join(map(str, results["seeds"]))
  out = [f"# Experiment {name}", "",
         f"Seeds {seeds}; mean ± sample std over the finished seeds. Written by "
         "launch/experiment.py from the runs' final_metrics.json, metrics.jsonl and "
         f"{PER_USER_FILE}.", ""]
  info = ["best epoch", "epochs", "s/epoch"]
  lines = []
  for row in rows:
    m = summary[row]["metrics"]
    lines.append([row, str(summary[row]["seeds_finished"])]
                 + [_mean_std(m.get(k), _digits(k))
                    for k in ("best_epoch", "epochs", "seconds_per_epoch", *main_metrics)])
  out += _table(["row", "seeds"] + info + list(main_metrics), lines) + [""]

  if results["reranked_rows"]:
    out += ["## LLM reranking", "",
            "Rows reranked by the LLM (launch/llm.py --stage=rerank on each trained run): their "
            "valid/* and test/* metrics above are the reranked ones, alpha (final = alpha * CF + "
            "(1 − alpha) * LLM) chosen on validation. LLM calls, prompts and seconds (wall, CPU) "
            "per seed, of the rerank as it ran; prompts found in the LLM cache (e.g. reranked "
            "before by another command) cost no call and almost no time.", ""]
    keys = ("rerank/alpha", "rerank/prompts", "rerank/llm_calls", "rerank/llm_seconds",
            "rerank/llm_cpu_seconds")
    out += _table(["row", "trained in", "alpha", "prompts", "LLM calls", "LLM s", "LLM CPU s"], [
        [row, ", ".join(sorted({os.path.dirname(d) for r, d in results["run_dirs"].items()
                                if r.split("/")[0] == row}))]
        + [_mean_std(summary[row]["metrics"].get(k), 2 if "seconds" in k or "alpha" in k else 0)
           for k in keys]
        for row in results["reranked_rows"]]) + [""]

  for baseline in results["baselines"]:
    out += [f"## Against `{baseline}`", "",
            "Per test user, the metric averaged over the seeds both rows finished (column "
            "seeds); users paired by id; "
            f"difference = row − {baseline}. Two-sided p-values of the Wilcoxon signed-rank test "
            f"and the paired t-test; * marks p < {SIGNIFICANCE_LEVEL}.", ""]
    lines = []
    for row in rows:
      for metric, test in sorted(results["significance"][baseline].get(row, {}).items()):
        lines.append([row, metric, ",".join(map(str, test["seeds"])), str(test["num_users"]),
                      _number(test.get("row_mean")),
                      _number(test.get("baseline_mean")), _number(test.get("mean_difference")),
                      _p_value(test.get("wilcoxon_p")), _p_value(test.get("ttest_p"))])
    if lines:
      out += _table(["row", "metric", "seeds", "users", "row mean", f"{baseline} mean", "difference",
                     "Wilcoxon p", "t-test p"], lines)
    else:
      out.append(f"No test: `{baseline}` or the other rows have no finished run with "
                 f"{PER_USER_FILE}.")
    out.append("")

  out += ["## Per seed", ""]
  lines = []
  for row in rows:
    for seed, record in summary[row]["per_seed"].items():
      lines.append([row, seed, _number(record.get("best_epoch"), 0)]
                   + [_number(record.get(k)) for k in main_metrics])
  out += _table(["row", "seed", "best epoch"] + list(main_metrics), lines) + [""]

  keys = sorted({k for row in rows for k in summary[row]["metrics"]})
  out += ["## Every metric", ""]
  out += _table(["metric"] + list(rows),
                [[k] + [_mean_std(summary[row]["metrics"].get(k), _digits(k)) for row in rows]
                 for k in keys])
  out.append("")

  if "published" in results:
    published = results["published"]
    out += ["## Published numbers", "", f"Source: {published['source']}.",
            f"Protocol: {published['protocol']}", "",
            "Relative = ours (mean over seeds) / published − 1.", ""]
    out += _table(["row", "metric", "published", "ours", "relative"], [
        [c["row"], c["metric"], _number(c["published"]), _mean_std(c["ours"]),
         "—" if c["relative"] is None else f"{100 * c['relative']:+.1f}%"]
        for c in published["comparison"]])
    out.append("")

  if "heatmap" in results:
    heatmap = results["heatmap"]
    out += [f"## {heatmap['metric']} over {heatmap['x_flag']} x {heatmap['y_flag']}", "",
            "Mean over seeds (heatmap.png); one table per setting of the rows' other arguments.",
            ""]
    for others, grid in heatmap["panels"].items():
      out += [f"`{others or '(no other arguments)'}`", ""]
      out += _table([f"{heatmap['y_flag']} \\ {heatmap['x_flag']}"] + grid["x"],
                    [[y] + [_number(v) for v in line] for y, line in zip(grid["y"], grid["mean"])])
      out.append("")

  if results["unfinished_runs"]:
    out += ["Not finished (left out): " + ", ".join(results["unfinished_runs"]) + ".", ""]
  if results["runs_without_per_user_file"]:
    out += [f"Without {PER_USER_FILE} (left out of the tests): "
            + ", ".join(results["runs_without_per_user_file"]) + ".", ""]
  return "\n".join(out)


def _save_figure(fig, path: str) -> None:
  """Saves a figure through a temporary file and a rename: never half-written."""
  temp = path + ".tmp.png"
  fig.savefig(temp, dpi=120, metadata={"Software": None})
  os.replace(temp, path)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_bars(results: dict[str, Any], metric: str, path: str) -> None:
  """A bar per row: mean of `metric` with std error bars, each seed's value as a dot."""
  plt = _pyplot()
  rows = [r for r in results["rows"] if metric in results["summary"][r]["metrics"]]
  fig, axis = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(rows)), 4))
  for x, row in enumerate(rows):
    stat = results["summary"][row]["metrics"][metric]
    axis.bar(x, stat["mean"], yerr=stat["std"] or 0.0, capsize=4, color="tab:blue", alpha=0.7)
    seeds = [r[metric] for r in results["summary"][row]["per_seed"].values() if metric in r]
    axis.plot([x] * len(seeds), seeds, "k.", markersize=4)
  axis.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
  axis.set_ylabel(metric)
  axis.set_title("mean ± std over seeds; dots: single seeds", fontsize=9)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)


def flag_value(args: Sequence[str], name: str) -> Optional[str]:
  """The last value a row's own arguments give flag `name` (None if they do not set it)."""
  value = None
  for arg in args:
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value


def heatmap_grid(results: dict[str, Any], x_flag: str, y_flag: str,
                 metric: str) -> dict[str, dict[str, Any]]:
  """{panel: {"x": values, "y": values, "mean": [[...]]}}: the metric's mean over the two flags'
  values (None: no finished run); rows that differ in their other arguments go to separate
  panels, keyed by those arguments."""
  panels = {}
  for row in results["rows"]:
    args = results["row_args"][row]
    x, y = flag_value(args, x_flag), flag_value(args, y_flag)
    stat = results["summary"][row]["metrics"].get(metric)
    if x is None or y is None:
      continue
    others = " ".join(a for a in args if not a.startswith((f"--{x_flag}=", f"--{y_flag}=")))
    panels.setdefault(others, {})[(x, y)] = None if stat is None else stat["mean"]
  grids = {}
  for others, cells in sorted(panels.items()):
    xs = sorted({x for x, _ in cells}, key=float)
    ys = sorted({y for _, y in cells}, key=float)
    grids[others] = {"x": xs, "y": ys,
                     "mean": [[cells.get((x, y)) for x in xs] for y in ys]}
  return grids


def plot_heatmap(grids: dict[str, dict[str, Any]], x_flag: str, y_flag: str, metric: str,
                 path: str) -> None:
  """One heatmap panel per group of rows (see heatmap_grid), the mean written in each cell."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(grids), figsize=(4.5 * len(grids), 4), squeeze=False)
  values = {others: np.array([[np.nan if v is None else v for v in line] for line in grid["mean"]])
            for others, grid in grids.items()}
  finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(0)])
  low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
  for axis, (others, grid) in zip(axes[0], grids.items()):  # One colour scale for all panels.
    image = axis.imshow(values[others], origin="lower", cmap="viridis", aspect="auto", vmin=low,
                        vmax=high)
    for (i, j), v in np.ndenumerate(values[others]):
      if np.isfinite(v):
        axis.text(j, i, f"{v:.4f}", ha="center", va="center", fontsize=8,
                  color="k" if v > (low + high) / 2 else "w")
    axis.set_xticks(range(len(grid["x"])), grid["x"])
    axis.set_yticks(range(len(grid["y"])), grid["y"])
    axis.set_xlabel(x_flag)
    axis.set_ylabel(y_flag)
    axis.set_title(others, fontsize=7, wrap=True)
    fig.colorbar(image, ax=axis, label=metric)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)


def write_report(name: str, experiment_dir: str, rows: Sequence[Row], runs: Sequence[Run],
                 baselines: Sequence[str], main_metrics: Sequence[str],
                 significance_metrics: Sequence[str], plot_metric: str,
                 published: Optional[str] = None,
                 heatmap: Optional[tuple[str, str, str]] = None) -> dict[str, Any]:
  """Writes results.json, results.md and results.png (and heatmap.png) into experiment_dir."""
  results = collect(rows, runs, baselines, significance_metrics)
  if published:
    results["published"] = published_rows(published, results)
  if heatmap:
    x_flag, y_flag, metric = heatmap
    results["heatmap"] = {"x_flag": x_flag, "y_flag": y_flag, "metric": metric,
                          "panels": heatmap_grid(results, x_flag, y_flag, metric)}
  os.makedirs(experiment_dir, exist_ok=True)
  reporting.write_json(os.path.join(experiment_dir, "results.json"), results)
  reporting.atomic_write_text(os.path.join(experiment_dir, "results.md"),
                              render_markdown(name, results, main_metrics))
  if any(plot_metric in results["summary"][r]["metrics"] for r in results["rows"]):
    plot_bars(results, plot_metric, os.path.join(experiment_dir, "results.png"))
  if heatmap and results["heatmap"]["panels"]:
    plot_heatmap(results["heatmap"]["panels"], *heatmap,
                 os.path.join(experiment_dir, "heatmap.png"))
  return results
