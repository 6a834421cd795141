"""Experiments: model configs ("rows") x seeds, each run by launch/train.py, then summarised.

An experiment config is a flagfile of launch/experiment.py (see configs/experiments/):

  # configs/experiments/ml100k.cfg
  --row=lightgcn: configs/ml100k_lightgcn.cfg
  --row=xsimgcl: configs/ml100k_xsimgcl.cfg
  --row=lagcl_random: configs/ml100k_lagcl.cfg --groups=random
  --seeds=0,1,2
  --baselines=xsimgcl,lagcl_random
  --run_flags=--patience=20

`--row=NAME: ARGS` (one line per row, in the order of the tables): NAME names the row and its
folder (letters, digits, `_`, `.`, `-`); ARGS are launch/train.py arguments, split as a shell
line: a token without a leading `--` is a model flagfile (passed as `--flagfile=PATH`), the others
are flags. `--run_flags` are appended to every row's arguments (so a command-line
`--run_flags=--num_epochs=2` shortens every run); later flags win. `--seed` and `--workdir` belong
to the runner: run (ROW, S) trains with `--seed=S --workdir=EXPERIMENT_DIR/ROW/seed_S`. Before
anything trains, the rows' flagfiles must exist and every flag name in the rows and in their
flagfiles be launch/train.py's (`check_rows`); the values are checked by train.py itself.

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
  metric, e.g. `ndcg@20`): each user's value is averaged over the row's seeds, users are paired by
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
RUN_FILE = "experiment_run.json"
FINAL_FILE = "final_metrics.json"
PER_USER_FILE = "per_user_test.npz"
RUNNER_FLAGS = ("seed", "workdir")
# launch/train.py's flags besides the Config fields (lagcl_jax/flags.py) and absl's logging ones.
TRAIN_SCRIPT_FLAGS = ("flagfile", "coordinator_address", "num_processes", "process_id",
                      "verbosity", "v", "logtostderr", "alsologtostderr")
SIGNIFICANCE_LEVEL = 0.05
_ROW_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]+$")  # Not "." or "..": it names a folder.


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the tables: a name and its launch/train.py arguments."""
  name: str
  args: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a row with one seed, in its own work directory."""
  row: str
  seed: int
  workdir: str
  args: tuple[str, ...]  # launch/train.py arguments, --seed and --workdir last.


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
  """`NAME: ARGS` (see the module docstring) as a Row."""
  where = f"--row={spec!r}"
  name, sep, rest = spec.partition(":")
  name = name.strip()
  if not sep or not _ROW_NAME.match(name):
    raise ValueError(f"{where}: expected NAME: ARGS with a NAME of letters, digits, _ . -")
  args = parse_args(rest, where)
  if not args:
    raise ValueError(f"{where}: no model flagfile or flags after the name")
  return Row(name, args)


def train_flag_names() -> set[str]:
  """Every flag launch/train.py knows (booleans also as --noNAME)."""
  types = typing.get_type_hints(config_lib.Config)
  booleans = {f"no{name}" for name, kind in types.items() if kind is bool}
  return set(types) | booleans | set(TRAIN_SCRIPT_FLAGS)


def check_rows(rows: Sequence[Row], baselines: Sequence[str] = (),
               run_flags: Sequence[str] = ()) -> list[str]:
  """Problems of the rows and run flags (duplicate names, unknown baselines, missing flagfiles,
  flags launch/train.py does not know); [] if none."""
  problems = []
  names = [row.name for row in rows]
  if not rows:
    problems.append("no --row given")
  problems += [f"--row: name {n!r} used twice" for n in sorted(set(names)) if names.count(n) > 1]
  problems += [f"--baselines: {b!r} is not a row name (rows: {', '.join(names)})"
               for b in baselines if b not in names]
  known = train_flag_names()

  def check_args(where: str, args: Sequence[str], seen: tuple[str, ...]) -> None:
    for arg in args:
      name, _, value = arg[2:].partition("=")
      if not arg.startswith("--"):
        problems.append(f"{where}: {arg!r}: expected a --flag")
      elif name not in known:
        problems.append(f"{where}: {arg!r}: launch/train.py has no flag --{name}")
      elif name == "flagfile" and not os.path.isfile(value):
        problems.append(f"{where}: flagfile {value} not found (from {os.getcwd()})")
      elif name == "flagfile" and value not in seen:  # Its lines, as absl reads them.
        with open(value) as f:
          for number, line in enumerate(f, start=1):
            if line.strip() and not line.lstrip().startswith(("#", "//")):
              check_args(f"{where}: {value}:{number}", [line.strip()], seen + (value,))

  for row in rows:
    check_args(f"row {row.name}", row.args, ())
  check_args("--run_flags", run_flags, ())
  return problems


def plan_runs(rows: Sequence[Row], seeds: Sequence[int], experiment_dir: str,
              run_flags: Sequence[str] = ()) -> list[Run]:
  """Every (row, seed) run, rows in order, seeds in order within a row."""
  runs = []
  for row in rows:
    for seed in seeds:
      workdir = os.path.join(experiment_dir, row.name, f"seed_{seed}")
      runs.append(Run(row.name, seed, workdir,
                      (*row.args, *run_flags, f"--seed={seed}", f"--workdir={workdir}")))
  return runs


def shard(runs: Sequence[Run], shard_index: int, num_shards: int) -> list[Run]:
  """The runs of one machine: every num_shards-th run from shard_index (rows spread evenly)."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard_index={shard_index}, --num_shards={num_shards}: expected "
                     "0 <= shard_index < num_shards")
  return list(runs[shard_index::num_shards])


def is_finished(run: Run) -> bool:
  return os.path.isfile(os.path.join(run.workdir, FINAL_FILE))


def status(run: Run) -> str:
  """finished | interrupted (started, not finished: train.py resumes it) | new."""
  if is_finished(run):
    return "finished"
  return "interrupted" if os.path.isfile(os.path.join(run.workdir, RUN_FILE)) else "new"


def recorded_args(run: Run) -> Optional[list[str]]:
  """The arguments the run was started with (None if it never started)."""
  path = os.path.join(run.workdir, RUN_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)["args"]


def changed_runs(runs: Sequence[Run]) -> list[str]:
  """Messages for the runs started with other arguments than their row now gives."""
  messages = []
  for run in runs:
    recorded = recorded_args(run)
    if recorded is not None and recorded != list(run.args):
      messages.append(f"{run.workdir}: started with {shlex.join(recorded)}, the config now gives "
                      f"{shlex.join(run.args)}; restore the row, or remove the folder or use "
                      "another --experiment_dir to rerun it")
  return messages


def execute(run: Run, train_command: Sequence[str] = TRAIN_COMMAND) -> int:
  """Runs (or resumes) one run to its end; its output is appended to train.log. Returns the
  exit status."""
  os.makedirs(run.workdir, exist_ok=True)
  reporting.write_json(os.path.join(run.workdir, RUN_FILE), {"args": list(run.args)})
  with open(os.path.join(run.workdir, "train.log"), "a") as log:
    log.write(f"$ {shlex.join([*train_command, *run.args])}\n")
    log.flush()
    return subprocess.run([*train_command, *run.args], stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def log_tail(run: Run, lines: int = 5) -> str:
  path = os.path.join(run.workdir, "train.log")
  if not os.path.isfile(path):
    return ""
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def run_all(runs: Sequence[Run], train_command: Sequence[str] = TRAIN_COMMAND,
            log: Callable[[str], None] = print) -> list[Run]:
  """Trains every unfinished run in order, going on after failures; returns the failed runs."""
  failed = []
  for number, run in enumerate(runs, start=1):
    prefix = f"[{number}/{len(runs)}] {run.row} seed {run.seed}"
    state = status(run)
    if state == "finished":
      log(f"{prefix}: finished before, skipped")
      continue
    log(f"{prefix}: {'resuming' if state == 'interrupted' else 'training'} in {run.workdir}")
    code = execute(run, train_command)
    if code == 0 and is_finished(run):
      log(f"{prefix}: done")
    else:
      failed.append(run)
      log(f"{prefix}: FAILED (exit status {code}); end of {run.workdir}/train.log:\n"
          f"{log_tail(run)}")
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
  if os.path.isfile(history_path):
    with open(history_path) as f:
      history = [json.loads(line) for line in f if line.strip()]
    seconds = [r["train/seconds"] for r in history if "train/seconds" in r]
    record["epochs"] = float(len(history))
    if seconds:  # The median: the first epoch's time includes compilation.
      record["seconds_per_epoch"] = float(np.median(seconds))
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


def significance(rows: Sequence[str], baseline: str, tables: dict[str, list[dict]],
                 metrics: Sequence[str]) -> dict[str, dict[str, dict]]:
  """{row: {metric: paired_test}} of every row but the baseline, from per-user tables (a list
  of `read_per_user` tables, one per finished seed, per row)."""
  result = {}
  for row in rows:
    if row == baseline or not tables.get(row) or not tables.get(baseline):
      continue
    result[row] = {m: paired_test(seed_averaged(tables[row], m),
                                  seed_averaged(tables[baseline], m)) for m in metrics}
  return result


def collect(rows: Sequence[Row], runs: Sequence[Run], baselines: Sequence[str],
            significance_metrics: Sequence[str]) -> dict[str, Any]:
  """The experiment's results from the finished runs' files (see the module docstring)."""
  records = {row.name: {} for row in rows}
  tables = {row.name: [] for row in rows}
  missing, without_per_user = [], []
  for run in runs:
    if not is_finished(run):
      missing.append(f"{run.row}/seed_{run.seed}")
      continue
    records[run.row][run.seed] = run_record(run)
    path = os.path.join(run.workdir, PER_USER_FILE)
    if os.path.isfile(path):
      tables[run.row].append(read_per_user(path))
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

  for baseline in results["baselines"]:
    out += [f"## Against `{baseline}`", "",
            "Per test user, the metric averaged over the row's seeds; users paired by id; "
            f"difference = row − {baseline}. Two-sided p-values of the Wilcoxon signed-rank test "
            f"and the paired t-test; * marks p < {SIGNIFICANCE_LEVEL}.", ""]
    lines = []
    for row in rows:
      for metric, test in sorted(results["significance"][baseline].get(row, {}).items()):
        lines.append([row, metric, str(test["num_users"]), _number(test.get("row_mean")),
                      _number(test.get("baseline_mean")), _number(test.get("mean_difference")),
                      _p_value(test.get("wilcoxon_p")), _p_value(test.get("ttest_p"))])
    if lines:
      out += _table(["row", "metric", "users", "row mean", f"{baseline} mean", "difference",
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
