"""Tests for the experiment runner (tools/experiments.py, launch/experiment.py).

Most tests drive the runner with a fake train script (FAKE_TRAIN: writes a run's files from its
seed and a --quality flag in a blink); one runs the real launch/train.py end to end on tiny
synthetic data.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tests import synthetic
from tools import experiments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TRAIN = r'''
import json, os, sys
import numpy as np

def parse(args):
  values = {}
  for arg in args:
    key, _, value = arg[2:].partition("=")
    if key == "flagfile":
      with open(value) as f:
        values.update(parse([l.strip() for l in f if l.strip().startswith("--")]))
    else:
      values[key] = value
  return values

flags = parse(sys.argv[1:])
workdir, seed = flags["workdir"], int(flags["seed"])
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "calls.txt"), "a") as f:
  f.write("call\n")
if flags.get("fail"):
  print("fake failure", file=sys.stderr)
  sys.exit(3)
if flags.get("augment_file") and not os.path.isfile(flags["augment_file"]):
  print(f"no {flags['augment_file']}", file=sys.stderr)
  sys.exit(5)
if flags.get("crash_first") and not os.path.exists(os.path.join(workdir, "started")):
  open(os.path.join(workdir, "started"), "w").close()
  sys.exit(1)
quality = float(flags.get("quality", 0)) + 0.1 * float(flags.get("tau_hard_scale", 0))
rng = np.random.default_rng(seed)
users = np.array([f"u{u}" for u in range(60)])
base = np.linspace(0.0, 0.6, 60)
per_user = {"ndcg@20": np.clip(base + quality + 0.05 * rng.standard_normal(60), 0, 1),
            "recall@20": np.clip(base + quality / 2 + 0.05 * rng.standard_normal(60), 0, 1)}
order = rng.permutation(60)  # Users in another order in every run: pairing is by id.
np.savez(os.path.join(workdir, "per_user_test.npz"), user_ids=users[order],
         **{k: v[order] for k, v in per_user.items()})
with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
  for epoch in range(1, 5):
    seconds = seed + epoch + 10.0 * (epoch == 1)  # Epoch 1 compiles.
    f.write(json.dumps({"epoch": epoch, "train/seconds": seconds}) + "\n")
final = {"best_epoch": 2 + seed, "model_dir": ".", "test/num_users": 60,
         "valid/ndcg@20": 0.1 + quality + 0.01 * seed,
         "test/ndcg@20": float(per_user["ndcg@20"].mean()),
         "test/recall@20": float(per_user["recall@20"].mean())}
with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
  json.dump(final, f)
'''


def script_command(path, text) -> tuple[str, str]:
  path.write_text(text)
  return (sys.executable, str(path))


@pytest.fixture
def fake_train(tmp_path):
  return script_command(tmp_path / "fake_train.py", FAKE_TRAIN)


def line_count(path) -> int:
  with open(path) as f:
    return len(f.readlines())


def calls(run) -> int:
  return line_count(os.path.join(run.workdir, "calls.txt"))


# --- Rows, planning, sharding. -------------------------------------------------------------------


def test_parse_row_flagfiles_and_flags():
  row = experiments.parse_row("lagcl_random:configs/ml100k_lagcl.cfg --groups=random")
  assert row == experiments.Row("lagcl_random",
                                ("--flagfile=configs/ml100k_lagcl.cfg", "--groups=random"))
  row = experiments.parse_row(" grid-1.5 :  a.cfg b.cfg --tau='0.5' ")
  assert row == experiments.Row("grid-1.5", ("--flagfile=a.cfg", "--flagfile=b.cfg",
                                             "--tau=0.5"))


@pytest.mark.parametrize("spec, message", [
    ("no_colon configs/x.cfg", "NAME: ARGS"),
    ("bad name: configs/x.cfg", "NAME: ARGS"),
    ("..: configs/x.cfg", "NAME: ARGS"),
    ("empty:", "no model flagfile"),
    ("seeded: configs/x.cfg --seed=3", "the runner sets --seed"),
    ("moved: configs/x.cfg --workdir=/tmp/x", "the runner sets --seed"),
    ("quote: configs/x.cfg --tau='1", "No closing quotation"),
])
def test_parse_row_errors_name_the_flag(spec, message):
  with pytest.raises(ValueError, match=message) as error:
    experiments.parse_row(spec)
  assert "--row=" in str(error.value)


def test_check_rows_reports_duplicates_baseline_and_missing_flagfiles(tmp_path):
  existing = tmp_path / "model.cfg"
  existing.write_text("# a model\n--num_epochs=1\n\n--noretrain_on_full\n")
  rows = [experiments.parse_row(f"a: {existing} --noretrain_on_full --num_epochs=3"),
          experiments.parse_row(f"a: {existing}"),
          experiments.parse_row(f"b: {tmp_path / 'missing.cfg'} --eps=0 --group_lossses=bpr")]
  problems = experiments.check_rows(rows, ["a", "c"], ["--num_epoch=2"])
  assert len(problems) == 5, problems
  assert "'a' used twice" in problems[0]
  assert "--baselines: 'c' is not a row name" in problems[1]
  assert "row b: flagfile" in problems[2] and "missing.cfg not found" in problems[2]
  assert "row b: '--group_lossses=bpr': launch/train.py has no flag --group_lossses" in problems[3]
  assert "--run_flags: '--num_epoch=2'" in problems[4]
  assert experiments.check_rows(rows[:1], ["a"], ["--patience=3"]) == []
  # Flags inside flagfiles (nested too) are checked, naming the file and line.
  inner = tmp_path / "inner.cfg"
  inner.write_text("--eps=0.1\n--valid_fyle=x.txt\n")
  outer = tmp_path / "outer.cfg"
  outer.write_text(f"--flagfile={inner}\n--flagfile={outer}\nstray\n")
  problems = experiments.check_rows([experiments.parse_row(f"c: {outer}")])
  assert problems == [
      f"row c: {outer}:1: {inner}:2: '--valid_fyle=x.txt': launch/train.py has no flag "
      "--valid_fyle",
      f"row c: {outer}:3: 'stray': expected a --flag"]
  assert experiments.check_rows([]) == ["no --row given"]


def test_plan_and_shard_cover_every_run_once_in_a_fixed_order(tmp_path):
  rows = [experiments.parse_row(f"r{i}: m.cfg --eps={i}") for i in range(3)]
  runs = experiments.plan_runs(rows, [0, 1, 2, 3], str(tmp_path), ["--num_epochs=2"])
  assert [(r.row, r.seed) for r in runs] == [(f"r{i}", s) for i in range(3) for s in range(4)]
  assert runs[5].workdir == os.path.join(str(tmp_path), "r1", "seed_1")
  assert runs[5].args == ("--flagfile=m.cfg", "--eps=1", "--num_epochs=2", "--seed=1",
                          f"--workdir={runs[5].workdir}")
  for num_shards in (1, 2, 5, 20):
    shards = [experiments.shard(runs, i, num_shards) for i in range(num_shards)]
    assert sorted((r.row, r.seed) for s in shards for r in s) == sorted(
        (r.row, r.seed) for r in runs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [experiments.shard(runs, i, num_shards) for i in range(num_shards)]
  with pytest.raises(ValueError, match="shard_index"):
    experiments.shard(runs, 2, 2)


def test_effective_flags_expand_flagfiles_and_keep_each_flags_last_value(tmp_path):
  inner = tmp_path / "inner.cfg"
  inner.write_text("# a comment\n--tau=0.2\n\n--eps=0.1\n")
  outer = tmp_path / "outer.cfg"
  outer.write_text(f"--flagfile={inner}\n--eps=0.5\n--nomask\n")
  flags = experiments.effective_flags([f"--flagfile={outer}", "--tau=0.3", "--workdir=/x"])
  assert flags == (("--eps", "0.5"), ("--nomask", None), ("--tau", "0.3"))
  assert flags == experiments.effective_flags(["--tau=0.3", "--nomask", "--eps=0.5"])
  assert flags != experiments.effective_flags([f"--flagfile={outer}", "--tau=0.30"])


def test_rows_that_set_the_same_values_share_one_run_with_the_first_rows_arguments(tmp_path):
  model = tmp_path / "model.cfg"
  model.write_text("--eps=0.1\n--cl_weight=0.1\n")
  rows = [experiments.parse_row(f"plain: {model}"),
          experiments.parse_row(f"spelled: {model} --eps=0.1 --cl_weight=0.1"),
          experiments.parse_row(f"other: {model} --eps=0.5")]
  runs = experiments.plan_runs(rows, [0, 1], str(tmp_path / "exp"))
  assert [r.workdir for r in runs[2:4]] == [r.workdir for r in runs[0:2]]
  assert [r.args for r in runs[2:4]] == [r.args for r in runs[0:2]]
  assert runs[4].workdir == str(tmp_path / "exp" / "other" / "seed_0")
  assert experiments.changed_runs(runs) == []


# --- Running: failures go on, finished runs are skipped, interrupted ones resume. ----------------


def test_run_all_skips_finished_resumes_interrupted_and_reports_failures(tmp_path, fake_train):
  rows = [experiments.parse_row("good: --quality=0.1"),
          experiments.parse_row("flaky: --quality=0.0 --crash_first=1"),
          experiments.parse_row("broken: --fail=1")]
  runs = experiments.plan_runs(rows, [0, 1], str(tmp_path / "exp"))
  messages = []
  failed = experiments.run_all(runs, fake_train, log=messages.append)
  # The first attempt of each flaky run crashes; the broken row fails; the others go on.
  assert [(r.row, r.seed) for r in failed] == [("flaky", 0), ("flaky", 1), ("broken", 0),
                                               ("broken", 1)]
  assert any("FAILED (exit status 3)" in m and "fake failure" in m for m in messages)
  assert [experiments.status(r) for r in runs] == ["finished"] * 2 + ["interrupted"] * 4

  messages = []
  failed = experiments.run_all(runs, fake_train, log=messages.append)
  assert [(r.row, r.seed) for r in failed] == [("broken", 0), ("broken", 1)]
  assert [calls(r) for r in runs] == [1, 1, 2, 2, 2, 2]  # Finished runs never ran again.
  assert sum("finished before, skipped" in m for m in messages) == 2
  assert sum("resuming" in m for m in messages) == 4


def test_changed_row_is_refused_for_started_runs(tmp_path, fake_train):
  row = experiments.parse_row("a: --quality=0.1")
  runs = experiments.plan_runs([row], [0], str(tmp_path))
  assert experiments.changed_runs(runs) == []
  experiments.run_all(runs, fake_train, log=lambda _: None)
  assert experiments.changed_runs(runs) == []
  changed = experiments.plan_runs([experiments.parse_row("a: --quality=0.2")], [0], str(tmp_path))
  [message] = experiments.changed_runs(changed)
  assert "--quality=0.1" in message and "--quality=0.2" in message
  # The same values spelled otherwise (a later value wins; a flagfile setting it) are no change.
  flagfile = tmp_path / "quality.cfg"
  flagfile.write_text("# the row's setting\n--quality=0.1\n")
  for respelled in ("a: --quality=0.2 --quality=0.1", f"a: --flagfile={flagfile}"):
    runs = experiments.plan_runs([experiments.parse_row(respelled)], [0], str(tmp_path))
    assert experiments.changed_runs(runs) == [], respelled


# --- Reranked rows: trained once with their twin, reranked once, reported from the rerank. -------

FAKE_RERANK = r'''
import json, os, sys
import numpy as np

flags = dict(arg[2:].partition("=")[::2] for arg in sys.argv[1:])
if flags["stage"] == "all":  # The LLM outputs of --llm_backbone.
  os.makedirs(flags["llm_dir"], exist_ok=True)
  with open(os.path.join(flags["llm_dir"], "llm_calls.txt"), "a") as f:
    f.write(flags["backbone_workdir"] + "\n")
  if flags.get("fail_llm"):
    sys.exit(6)
  open(os.path.join(flags["llm_dir"], "augment.txt"), "w").close()
  sys.exit(0)
run, out = flags["backbone_workdir"], flags["rerank_dir"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "rerank_calls.txt"), "a") as f:
  f.write("call\n")
if flags.get("fail_rerank"):
  sys.exit(4)
gain = float(flags.get("gain", 0))
with np.load(os.path.join(run, "per_user_test.npz")) as data:
  users = data["user_ids"]
  per_user = {k: data[k] + gain * np.linspace(0.5, 1.5, len(users))  # Mean gain: `gain`.
              for k in data.files if k != "user_ids"}
np.savez(os.path.join(out, "rerank_per_user_test.npz"), user_ids=users, **per_user)
means = {k: float(v.mean()) for k, v in per_user.items()}
with open(os.path.join(out, "rerank.json"), "w") as f:
  json.dump({"alpha": 0.5, "valid": {"reranked": {"ndcg@20": 0.5}},
             "test": {"reranked": {**means, "num_users": len(users)}},
             "llm": {"prompts": 40, "llm_calls": 40, "cache_hits": 0, "wall_seconds": 2.0,
                     "cpu_seconds": 3.0}}, f)
'''


@pytest.fixture
def fake_rerank(tmp_path):
  return script_command(tmp_path / "fake_rerank.py", FAKE_RERANK)


def rerank_calls(run) -> int:
  return line_count(os.path.join(run.rerank_dir, "rerank_calls.txt"))


def test_reranked_row_shares_its_twins_training_and_is_reranked_once(tmp_path, fake_train,
                                                                      fake_rerank):
  rows = [experiments.parse_row("base: --quality=0.0"),
          experiments.parse_row("other: --quality=0.05"),
          experiments.parse_row("reranked: --quality=0.0 --llm_rerank"),
          experiments.parse_row("both: --quality=0.05 --tau_hard_scale=0 --llm_rerank")]
  assert rows[2] == experiments.Row("reranked", ("--quality=0.0",), rerank=True)
  experiment_dir = str(tmp_path / "exp")
  runs = experiments.plan_runs(rows, [0, 1], experiment_dir, llm_flags=["--gain=0.1"])
  base, reranked, both = runs[0:2], runs[4:6], runs[6:8]
  assert [r.workdir for r in reranked] == [r.workdir for r in base]  # The twin's training.
  assert [r.args for r in reranked] == [r.args for r in base]
  assert reranked[0].rerank_dir == os.path.join(experiment_dir, "reranked", "seed_0")
  assert reranked[0].rerank_args == ("--stage=rerank", "--gain=0.1",
                                     f"--backbone_workdir={base[0].workdir}",
                                     f"--rerank_dir={reranked[0].rerank_dir}")
  assert both[1].workdir == both[1].rerank_dir == os.path.join(experiment_dir, "both", "seed_1")
  assert base[0].rerank_dir is None and base[0].rerank_args == ()
  # Runs sharing a work directory stay on one machine.
  for index in (0, 1):
    mine = experiments.shard(runs, index, 2)
    assert {r.workdir for r in mine}.isdisjoint(
        {r.workdir for r in experiments.shard(runs, 1 - index, 2)})

  messages = []
  assert experiments.run_all(runs, fake_train, messages.append, fake_rerank) == []
  assert [calls(r) for r in runs] == [1] * 8  # base's runs trained once for both rows.
  assert [rerank_calls(r) for r in reranked + both] == [1] * 4
  assert sum("same training as base seed" in m for m in messages) == 2
  assert sum("reranked (40 LLM calls, 2.0 s)" in m for m in messages) == 4

  messages = []  # A rerun trains nothing and reranks nothing.
  assert experiments.run_all(runs, fake_train, messages.append, fake_rerank) == []
  assert [calls(r) for r in runs] == [1] * 8
  assert [rerank_calls(r) for r in reranked + both] == [1] * 4
  assert sum("reranked before, skipped" in m for m in messages) == 4

  results = experiments.collect(rows, runs, ["base"], ["ndcg@20"])
  summary = results["summary"]
  # The reranked row reports the rerank's metrics (here the base's + 0.1), its twin's training.
  for key in ("test/ndcg@20", "test/recall@20"):
    assert summary["reranked"]["metrics"][key]["mean"] == pytest.approx(
        summary["base"]["metrics"][key]["mean"] + 0.1)
  assert summary["reranked"]["metrics"]["valid/ndcg@20"]["mean"] == 0.5
  assert summary["reranked"]["metrics"]["best_epoch"] == summary["base"]["metrics"]["best_epoch"]
  assert summary["reranked"]["metrics"]["rerank/llm_seconds"]["mean"] == 2.0
  assert summary["reranked"]["metrics"]["rerank/llm_calls"]["mean"] == 40
  # Its significance test pairs the reranked per-user values with the baseline's.
  test = results["significance"]["base"]["reranked"]["ndcg@20"]
  assert test["num_users"] == 60 and test["mean_difference"] == pytest.approx(0.1)
  assert results["significance"]["base"]["other"]["ndcg@20"]["mean_difference"] != \
      pytest.approx(0.1)
  markdown = experiments.render_markdown("demo", results, ["test/ndcg@20"])
  assert "## LLM reranking" in markdown
  trained_in = os.path.join(experiment_dir, "base")
  assert (f"| reranked | {trained_in} | 0.50 ± 0.00 | 40 ± 0 | 40 ± 0 | 2.00 ± 0.00 "
          "| 3.00 ± 0.00 |") in markdown

  # A lost rerank is redone (and only it); a failing one is reported and left out of the tables.
  os.remove(os.path.join(reranked[0].rerank_dir, experiments.RERANK_FILE))
  failing = experiments.plan_runs(rows, [0, 1], experiment_dir, llm_flags=["--gain=0.1",
                                                                          "--fail_rerank=1"])
  assert len(experiments.changed_runs(failing)) == 4  # Other LLM flags than the reranks had.
  messages = []
  assert experiments.run_all(failing, fake_train, messages.append, fake_rerank) == [failing[4]]
  assert "rerank FAILED (exit status 4)" in "".join(messages)
  assert rerank_calls(reranked[0]) == 2 and rerank_calls(reranked[1]) == 1
  results = experiments.collect(rows, runs, ["base"], ["ndcg@20"])
  assert results["unfinished_runs"] == ["reranked/seed_0 (not reranked)"]
  assert results["summary"]["reranked"]["seeds_finished"] == 1


def test_llm_dir_in_rows_and_llm_flags_is_the_last_llm_dir():
  rows = [experiments.parse_row("base: --quality=0"),
          experiments.parse_row("augmented: --augment_file={llm_dir}/augment.txt --llm_rerank")]
  llm_flags = ("--llm_dir=a", "--cache_dir={llm_dir}/cache", "--llm_model=m", "--llm_dir=b")
  resolved, flags = experiments.resolve_llm_dir(rows, llm_flags)
  assert resolved[0] == rows[0] and not resolved[0].uses_llm_outputs
  assert resolved[1] == experiments.Row("augmented", ("--augment_file=b/augment.txt",),
                                        rerank=True, uses_llm_outputs=True)
  assert flags == ("--llm_dir=a", "--cache_dir=b/cache", "--llm_model=m", "--llm_dir=b")
  with pytest.raises(ValueError, match="rows augmented name {llm_dir} but --llm_flags gives no"):
    experiments.resolve_llm_dir(rows, ["--llm_model=m"])
  with pytest.raises(ValueError, match="--llm_flags name {llm_dir}"):
    experiments.resolve_llm_dir(rows[:1], ["--cache_dir={llm_dir}/cache"])
  assert experiments.resolve_llm_dir(rows[:1], []) == (rows[:1], ())


def test_check_rows_wants_the_llm_backbone_before_the_rows_needing_the_llm(tmp_path):
  model = tmp_path / "model.cfg"
  model.write_text("--num_layers=2\n")
  rows, llm_flags = experiments.resolve_llm_dir(
      [experiments.parse_row(f"base: {model}"),
       experiments.parse_row(f"augmented: {model} --augment_file={{llm_dir}}/augment.txt"),
       experiments.parse_row(f"reranked: {model} --llm_rerank")], ["--llm_dir=out"])
  assert experiments.check_rows(rows, llm_flags=llm_flags, llm_backbone="base") == []
  assert experiments.check_rows(rows, llm_flags=llm_flags, llm_backbone="nope") == [
      "--llm_backbone: 'nope' is not a row name"]
  assert experiments.check_rows(rows, llm_flags=llm_flags, llm_backbone="reranked") == [
      f"--llm_backbone=reranked: row {name} needs the LLM's outputs, so it must come after the "
      "backbone row" for name in ("augmented", "reranked")]
  assert "--llm_backbone=base: no --llm_flags give the LLM" in experiments.check_rows(
      rows[:1], llm_backbone="base")


def test_llm_outputs_are_made_once_after_the_backbone_and_before_the_runs_needing_them(
    tmp_path, fake_train, fake_rerank):
  llm_dir = str(tmp_path / "llm")
  rows, llm_flags = experiments.resolve_llm_dir(
      [experiments.parse_row("base: --quality=0"),
       experiments.parse_row("augmented: --quality=0.05 --augment_file={llm_dir}/augment.txt"),
       experiments.parse_row("reranked: --quality=0 --llm_rerank")], [f"--llm_dir={llm_dir}"])
  experiment_dir = str(tmp_path / "exp")
  runs = experiments.plan_runs(rows, [0, 1], experiment_dir, llm_flags=llm_flags)
  assert [run.needs_llm for run in runs] == [False, False, True, True, True, True]
  outputs = experiments.plan_llm_outputs(runs, "base", experiment_dir, llm_flags)
  assert outputs.backbone == runs[0]
  assert outputs.args == ("--stage=all", f"--llm_dir={llm_dir}",
                          f"--backbone_workdir={runs[0].workdir}")
  llm_calls = os.path.join(llm_dir, "llm_calls.txt")

  # The stage fails: the runs needing it fail unrun, the others train.
  failing = dataclasses.replace(outputs, args=(*outputs.args, "--fail_llm=1"))
  messages = []
  assert experiments.run_all(runs, fake_train, messages.append, fake_rerank,
                             failing) == runs[2:]
  assert line_count(llm_calls) == 1 and "LLM outputs: FAILED (exit status 6)" in messages[5]
  assert all(experiments.is_finished(run) for run in runs[:2])
  assert not os.path.exists(runs[2].workdir)

  messages = []  # Then it works: run once, before the augmented row trains (it needs the file).
  assert experiments.run_all(runs, fake_train, messages.append, fake_rerank, outputs) == []
  assert line_count(llm_calls) == 2
  assert messages[2] == f"LLM outputs: launch/llm.py --stage=all on {runs[0].workdir}"
  assert messages[4].startswith("[3/6] augmented seed 0: training")
  assert [experiments.is_reranked(run) for run in runs[4:]] == [True, True]
  with open(os.path.join(experiment_dir, "llm_outputs", "llm.log")) as f:
    assert "--stage=all" in f.readline()

  messages = []  # Nothing left to do: no LLM stage.
  assert experiments.run_all(runs, fake_train, messages.append, fake_rerank, outputs) == []
  assert line_count(llm_calls) == 2 and not any("LLM outputs" in m for m in messages)

  # An unfinished backbone (another shard trains it) is reported, and nothing needing it runs.
  os.remove(os.path.join(runs[0].workdir, experiments.FINAL_FILE))
  os.remove(os.path.join(runs[2].workdir, experiments.FINAL_FILE))
  messages = []
  failed = experiments.run_all(runs[1:], fake_train, messages.append, fake_rerank, outputs)
  assert failed == [runs[2], runs[4]] and line_count(llm_calls) == 2  # runs[4]: base's training.
  assert "the backbone run" in messages[1] and "is not finished" in messages[1]


def test_finished_runs_of_other_experiments_are_reused(tmp_path, fake_train):
  old = experiments.plan_runs([experiments.parse_row("a: --quality=0.1"),
                               experiments.parse_row("b: --quality=0.2")], [0, 1],
                              str(tmp_path / "old"))
  experiments.run_all(old[:3], fake_train, log=lambda _: None)  # b seed 1 never ran.
  reusable = experiments.finished_runs([str(tmp_path / "old")])
  assert sorted(workdir for workdir, _ in reusable.values()) == sorted(r.workdir for r in old[:3])
  rows = [experiments.parse_row("renamed_b: --quality=0.2"),
          experiments.parse_row("new: --quality=0.3")]
  runs = experiments.plan_runs(rows, [0, 1], str(tmp_path / "new"), reusable=reusable)
  assert runs[0].workdir == old[2].workdir and runs[0].args == old[2].args
  assert runs[1].workdir == str(tmp_path / "new" / "renamed_b" / "seed_1")
  assert experiments.changed_runs(runs) == []
  messages = []
  experiments.run_all(runs, fake_train, log=messages.append)
  assert calls(old[2]) == 1 and "finished before, skipped" in messages[0]
  assert experiments.finished_runs([str(tmp_path / "missing")]) == {}
  # The same values spelled through a flagfile: the finished run, with its recorded arguments.
  model = tmp_path / "b.cfg"
  model.write_text("--quality=0.2\n")
  spelled = experiments.plan_runs([experiments.parse_row(f"from_file: {model}")], [0],
                                  str(tmp_path / "new2"), reusable=reusable)
  assert spelled[0].workdir == old[2].workdir and spelled[0].args == old[2].args


def test_check_rows_wants_known_llm_flags_for_reranked_rows(tmp_path):
  rows = [experiments.parse_row("r: --eps=0.1 --llm_rerank")]
  [problem] = experiments.check_rows(rows)
  assert "rows r are reranked (--llm_rerank) but no --llm_flags" in problem
  llm_config = tmp_path / "llm.cfg"
  llm_config.write_text("--llm_model=x\n--rerank_top_n=20\n--top_k=10,20\n--llm_modle=y\n")
  assert experiments.check_rows(rows, llm_flags=[f"--flagfile={llm_config}", "--stage=all"]) == [
      f"--llm_flags: {llm_config}:4: '--llm_modle=y': launch/llm.py has no flag --llm_modle"]


# --- Summary: aggregation, significance, rendering. -----------------------------------------------


def finished_experiment(tmp_path, fake_train, seeds=(0, 1, 2)):
  rows = [experiments.parse_row("base: --quality=0.0"),
          experiments.parse_row("better: --quality=0.05"),
          experiments.parse_row("same: --quality=0.0")]
  runs = experiments.plan_runs(rows, list(seeds), str(tmp_path / "exp"))
  assert experiments.run_all(runs, fake_train, log=lambda _: None) == []
  return rows, runs


def test_collect_means_stds_and_per_seed_values(tmp_path, fake_train):
  rows, runs = finished_experiment(tmp_path, fake_train)
  results = experiments.collect(rows, runs, ["base"], ["ndcg@20"])
  better = results["summary"]["better"]
  assert better["seeds_finished"] == 3
  finals = [json.loads(open(os.path.join(r.workdir, "final_metrics.json")).read())
            for r in runs if r.row == "better"]
  for key in ("valid/ndcg@20", "test/ndcg@20", "test/recall@20", "best_epoch"):
    values = [f[key] for f in finals]
    assert better["metrics"][key]["mean"] == pytest.approx(sum(values) / 3)
    mean = sum(values) / 3
    assert better["metrics"][key]["std"] == pytest.approx(
        math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
  assert "model_dir" not in better["metrics"]
  # Seconds per epoch: the median of the 4 epochs' train/seconds (12, 4, 5, 6 for seed 2).
  assert better["per_seed"]["2"]["seconds_per_epoch"] == 5.5
  assert better["per_seed"]["2"]["epochs"] == 4
  assert results["unfinished_runs"] == [] and results["runs_without_per_user_file"] == []


def test_single_seed_has_no_std(tmp_path, fake_train):
  rows, runs = finished_experiment(tmp_path, fake_train, seeds=(0,))
  results = experiments.collect(rows, runs, [], [])
  assert results["summary"]["base"]["metrics"]["test/ndcg@20"]["std"] is None
  assert results["significance"] == {}


def test_run_without_epochs_has_no_best_epoch(tmp_path, fake_train):
  """A model that trains nothing (MostPop: no metrics.jsonl) reports no best epoch, not 0."""
  rows, runs = finished_experiment(tmp_path, fake_train, seeds=(0,))
  os.remove(os.path.join(runs[0].workdir, "metrics.jsonl"))
  record = experiments.run_record(runs[0])
  assert "best_epoch" not in record and "epochs" not in record
  assert record["test/ndcg@20"] > 0
  assert experiments.run_record(runs[1])["best_epoch"] == 2


def test_significance_pairs_users_by_id_over_seed_means(tmp_path, fake_train):
  rows, runs = finished_experiment(tmp_path, fake_train)
  results = experiments.collect(rows, runs, ["base", "same"], ["ndcg@20", "recall@20"])
  assert set(results["significance"]["base"]) == {"better", "same"}
  assert set(results["significance"]["same"]) == {"base", "better"}
  tests = results["significance"]["base"]

  def user_means(row):
    per_seed = []
    for run in runs:
      if run.row == row:
        with np.load(os.path.join(run.workdir, "per_user_test.npz")) as data:
          per_seed.append(dict(zip(data["user_ids"].tolist(), data["ndcg@20"].tolist())))
    return {u: np.mean([s[u] for s in per_seed]) for u in per_seed[0]}

  better, base = user_means("better"), user_means("base")
  users = sorted(base)
  differences = np.array([better[u] - base[u] for u in users])
  test = tests["better"]["ndcg@20"]
  assert test["num_users"] == 60
  assert test["mean_difference"] == pytest.approx(differences.mean())
  assert test["ttest_p"] == pytest.approx(
      stats.ttest_1samp(differences, 0.0).pvalue)
  assert test["wilcoxon_p"] < 0.05  # quality +0.05 on 60 users: a clear gain.
  assert tests["same"]["ndcg@20"]["mean_difference"] == 0.0
  assert tests["same"]["ndcg@20"]["wilcoxon_p"] is None  # All ties.


def test_significance_uses_only_the_seeds_both_rows_finished(tmp_path, fake_train):
  rows, runs = finished_experiment(tmp_path, fake_train)
  for run in runs:  # "better" keeps seed 0 only
    if run.row == "better" and run.seed > 0:
      os.remove(os.path.join(run.workdir, "final_metrics.json"))
  results = experiments.collect(rows, runs, ["base"], ["ndcg@20"])
  test = results["significance"]["base"]["better"]["ndcg@20"]
  assert test["seeds"] == [0]
  assert results["significance"]["base"]["same"]["ndcg@20"]["seeds"] == [0, 1, 2]

  def seed0(row):
    run = next(r for r in runs if r.row == row and r.seed == 0)
    with np.load(os.path.join(run.workdir, "per_user_test.npz")) as data:
      return dict(zip(data["user_ids"].tolist(), data["ndcg@20"].tolist()))

  better, base = seed0("better"), seed0("base")
  assert test["mean_difference"] == pytest.approx(np.mean([better[u] - base[u] for u in base]))
  assert "| better | ndcg@20 | 0 | 60 |" in experiments.render_markdown("e", results, ["test/ndcg@20"])


def wilcoxon_normal_reference(differences):
  """Two-sided Wilcoxon signed-rank p-value from the formula: zeros dropped, average ranks of
  |d|, W+ against n(n+1)/4 with variance n(n+1)(2n+1)/24 - sum(t^3 - t)/48 over tie groups."""
  d = [x for x in differences if x != 0]
  n = len(d)
  magnitudes = sorted(abs(x) for x in d)
  rank = {}
  i = 0
  while i < n:
    j = i
    while j + 1 < n and magnitudes[j + 1] == magnitudes[i]:
      j += 1
    rank[magnitudes[i]] = (i + j) / 2 + 1  # Average of ranks i+1 .. j+1.
    i = j + 1
  w_plus = sum(rank[abs(x)] for x in d if x > 0)
  ties = [magnitudes.count(m) for m in set(magnitudes)]
  variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t ** 3 - t for t in ties) / 48
  z = (w_plus - n * (n + 1) / 4) / math.sqrt(variance)
  return math.erfc(abs(z) / math.sqrt(2))


def test_paired_test_matches_the_wilcoxon_formula_with_ties_and_zeros():
  rng = np.random.default_rng(0)
  baseline = rng.integers(0, 5, 80) / 4  # Coarse values: many tied and zero differences.
  row = np.clip(baseline + rng.integers(-1, 3, 80) / 4, 0, 1)
  users = [f"u{i}" for i in range(80)]
  result = experiments.paired_test(dict(zip(users, row)), dict(zip(users, baseline)))
  assert result["wilcoxon_p"] == pytest.approx(wilcoxon_normal_reference(row - baseline),
                                               rel=1e-9)
  differences = row - baseline
  t = differences.mean() / (differences.std(ddof=1) / math.sqrt(80))
  assert result["ttest_p"] == pytest.approx(2 * stats.t.sf(abs(t), 79), rel=1e-9)
  # Only shared users are paired.
  partial = experiments.paired_test(dict(zip(users[:50], row)), dict(zip(users[10:], baseline)))
  assert partial["num_users"] == 40


def test_per_user_file_errors_name_the_file(tmp_path):
  path = tmp_path / "per_user_test.npz"
  np.savez(path, user_ids=np.array(["a", "b"]), **{"ndcg@20": np.zeros(3)})
  with pytest.raises(ValueError, match=f"{path}.*shape"):
    experiments.read_per_user(str(path))
  np.savez(path, user_ids=np.array(["a", "a"]), **{"ndcg@20": np.zeros(2)})
  with pytest.raises(ValueError, match="repeated user ids"):
    experiments.read_per_user(str(path))


def test_report_is_deterministic_and_complete(tmp_path, fake_train):
  rows, runs = finished_experiment(tmp_path, fake_train)
  published = tmp_path / "published.json"
  published.write_text(json.dumps({"source": "Paper X", "protocol": "full ranking",
                                   "rows": {"base": {"test/ndcg@20": 0.3}}}))
  experiment_dir = str(tmp_path / "exp")
  write = lambda: experiments.write_report(
      "demo", experiment_dir, rows, runs, ["base"], ["valid/ndcg@20", "test/ndcg@20"],
      ["ndcg@20"], "test/ndcg@20", str(published))
  results = write()
  files = {name: open(os.path.join(experiment_dir, name), "rb").read()
           for name in ("results.json", "results.md", "results.png")}
  write()
  for name, content in files.items():
    assert open(os.path.join(experiment_dir, name), "rb").read() == content, name
  assert json.loads(files["results.json"]) == json.loads(json.dumps(results))
  markdown = files["results.md"].decode()
  better = results["summary"]["better"]["metrics"]["test/ndcg@20"]
  assert f"{better['mean']:.4f} ± {better['std']:.4f}" in markdown
  assert "| better | ndcg@20 | 0,1,2 | 60 |" in markdown
  [line] = [l for l in markdown.splitlines() if l.startswith("| better | ndcg@20 |")]
  assert line.split(" | ")[7].endswith("*")  # Wilcoxon p < 0.05 is marked.
  ours = results["summary"]["base"]["metrics"]["test/ndcg@20"]["mean"]
  assert f"{100 * (ours / 0.3 - 1):+.1f}%" in markdown
  assert markdown.index("| base |") < markdown.index("| better |") < markdown.index("| same |")


def test_report_lists_unfinished_runs_and_heatmap_grid(tmp_path, fake_train):
  rows = [experiments.parse_row(f"t{x}_w{y}: --tau_hard_scale={x} --hard_weight={y}")
          for x, y in [(0.1, 1), (0.5, 1), (0.1, 2)]]
  rows.append(experiments.parse_row("other: --quality=0.5 --tau_hard_scale=0.1 --hard_weight=1"))
  runs = experiments.plan_runs(rows, [0], str(tmp_path / "exp"))
  experiments.run_all(runs[:2] + runs[3:], fake_train, log=lambda _: None)
  results = experiments.write_report("grid", str(tmp_path / "exp"), rows, runs, [],
                                     ["valid/ndcg@20"], [], "valid/ndcg@20",
                                     heatmap=("tau_hard_scale", "hard_weight", "valid/ndcg@20"))
  assert results["unfinished_runs"] == ["t0.1_w2/seed_0"]
  assert "t0.1_w2/seed_0" in open(tmp_path / "exp" / "results.md").read()
  panels = results["heatmap"]["panels"]  # Rows differing in other flags: separate panels.
  assert sorted(panels) == ["", "--quality=0.5"]
  assert panels[""]["x"] == ["0.1", "0.5"] and panels[""]["y"] == ["1", "2"]
  assert panels[""]["mean"][0] == pytest.approx([0.11, 0.15])
  assert panels[""]["mean"][1] == [None, None]
  assert panels["--quality=0.5"]["mean"] == [[pytest.approx(0.61)]]
  assert (tmp_path / "exp" / "heatmap.png").is_file()
  markdown = (tmp_path / "exp" / "results.md").read_text()
  assert "| hard_weight \\ tau_hard_scale | 0.1 | 0.5 |\n|---|---|---|\n| 1 | 0.1100 | 0.1500 |\n" \
      "| 2 | — | — |" in markdown


# --- launch/experiment.py with the real launch/train.py. ------------------------------------------


def run_driver(args, cwd, cache_dir):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "experiment.py"), *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_launch_experiment_end_to_end(tmp_path):
  paths = synthetic.write_paper_files(str(tmp_path))
  model = tmp_path / "tiny.cfg"
  model.write_text("\n".join(synthetic.flag_args(synthetic.tiny_config(paths, groups=False)))
                   + "\n")
  config = tmp_path / "demo.cfg"
  config.write_text(f"# two rows x two seeds\n--row=lightgcn: {model} --eps=0 --cl_weight=0\n"
                    f"--row=xsimgcl: {model}\n--seeds=0,1\n--baselines=lightgcn\n")
  experiment_dir = tmp_path / "runs" / "experiments" / "demo"
  cache = tmp_path / "cache"

  listed = []
  for index in (0, 1):
    result = run_driver([f"--flagfile={config}", "--dry_run", f"--shard_index={index}",
                         "--num_shards=2"], tmp_path, cache)
    assert result.returncode == 0, result.stderr
    listed.append([line.split(":")[0].split() for line in result.stdout.splitlines()[1:]])
  assert listed == [[["new", "lightgcn", "seed", "0"], ["new", "xsimgcl", "seed", "0"]],
                    [["new", "lightgcn", "seed", "1"], ["new", "xsimgcl", "seed", "1"]]]

  for index in (0, 1):  # Each shard trains its own two runs.
    result = run_driver([f"--flagfile={config}", f"--shard_index={index}", "--num_shards=2"],
                        tmp_path, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": done") == 2, result.stdout
  results_json = (experiment_dir / "results.json").read_bytes()
  results_md = (experiment_dir / "results.md").read_bytes()
  results = json.loads(results_json)
  for row in ("lightgcn", "xsimgcl"):
    summary = results["summary"][row]
    assert summary["seeds_finished"] == 2
    assert 0 < summary["metrics"]["test/ndcg@20"]["mean"] <= 1
    assert summary["metrics"]["epochs"]["mean"] == 2
  per_user = (experiment_dir / "xsimgcl" / "seed_0" / experiments.PER_USER_FILE).is_file()
  assert bool(results["significance"]["lightgcn"]) == per_user
  assert (experiment_dir / "results.png").is_file()

  result = run_driver([f"--flagfile={config}"], tmp_path, cache)  # Everything finished.
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count("finished before, skipped") == 4 and ": done" not in result.stdout
  assert (experiment_dir / "results.json").read_bytes() == results_json
  assert (experiment_dir / "results.md").read_bytes() == results_md

  # A failing run: reported, the exit status counts it.
  bad = tmp_path / "bad.cfg"
  bad.write_text(f"--row=bad: {model} --num_layers=0\n")
  result = run_driver([f"--flagfile={bad}"], tmp_path, cache)
  assert result.returncode == 1, result.stdout + result.stderr[-3000:]
  assert "FAILED" in result.stdout and "--num_layers=0" in result.stdout


def test_launch_experiment_reranks_with_the_llm(tmp_path):
  """launch/train.py and launch/llm.py --stage=rerank (a tiny random-weight LLM) for real: the
  reranked row reuses its twin's run, reports the rerank's metrics, a rerun makes no LLM call."""
  from tests import llm_testing  # pylint: disable=g-import-not-at-top
  paths = llm_testing.write_movie_files(str(tmp_path / "data"), llm_testing.movie_dataset())
  model = tmp_path / "tiny.cfg"
  model.write_text("\n".join(synthetic.flag_args(synthetic.tiny_config(
      paths, groups=False, metadata_dir=str(tmp_path / "data"), valid_fraction=0.25,
      top_k=(5, 10), select_metric="valid/ndcg@10"))) + "\n")
  llm = llm_testing.build_tiny_model(str(tmp_path / "llm"))
  config = tmp_path / "demo.cfg"
  config.write_text(
      f"--row=base: {model}\n--row=reranked: {model} --llm_rerank\n--seeds=0\n--baselines=base\n"
      f"--llm_flags=--llm_model={llm} --llm_dtype=float32 --llm_device=cpu --llm_batch_size=8 "
      f"--llm_dir={tmp_path / 'llm_out'} --rerank_top_n=10 --rerank_alphas=0.0,0.5,1.0\n"
      "--metrics=test/ndcg@5,test/ndcg@10\n--significance_metrics=ndcg@5,ndcg@10\n")
  experiment_dir = tmp_path / "runs" / "experiments" / "demo"
  run_dir, rerank_dir = experiment_dir / "base" / "seed_0", experiment_dir / "reranked" / "seed_0"
  cache = tmp_path / "cache"

  result = run_driver([f"--flagfile={config}"], tmp_path, cache)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.count(": done") == 1 and "same training as base seed 0" in result.stdout
  assert not (rerank_dir / "final_metrics.json").exists()  # Trained once, in base's folder.
  rerank = json.loads((rerank_dir / experiments.RERANK_FILE).read_text())
  assert rerank["llm"]["llm_calls"] > 0
  assert rerank["provenance"]["run"] == "runs/experiments/demo/base/seed_0"  # Relative to cwd.
  final = json.loads((run_dir / "final_metrics.json").read_text())
  for key in ("ndcg@5", "ndcg@10", "recall@10"):  # The CF lists are the run's own top 10.
    assert rerank["test"]["cf"][key] == pytest.approx(final[f"test/{key}"])
  results = json.loads((experiment_dir / "results.json").read_text())
  reranked = results["summary"]["reranked"]["metrics"]
  assert reranked["test/ndcg@5"]["mean"] == pytest.approx(rerank["test"]["reranked"]["ndcg@5"])
  assert reranked["rerank/llm_calls"]["mean"] == rerank["llm"]["llm_calls"]
  per_user = experiments.read_per_user(str(rerank_dir / experiments.RERANK_PER_USER_FILE))
  assert np.mean(list(per_user["ndcg@5"].values())) == pytest.approx(
      rerank["test"]["reranked"]["ndcg@5"])
  test = results["significance"]["base"]["reranked"]["ndcg@5"]
  assert test["row_mean"] == pytest.approx(rerank["test"]["reranked"]["ndcg@5"])
  assert test["baseline_mean"] == pytest.approx(final["test/ndcg@5"])
  assert "## LLM reranking" in (experiment_dir / "results.md").read_text()

  result = run_driver([f"--flagfile={config}"], tmp_path, cache)  # Nothing left to do.
  assert result.returncode == 0, result.stderr[-3000:]
  assert "reranked before, skipped" in result.stdout and "LLM reranking" not in result.stdout
  # A rerank redone (its output lost) finds every prompt in the LLM cache.
  (rerank_dir / experiments.RERANK_FILE).unlink()
  result = run_driver([f"--flagfile={config}"], tmp_path, cache)
  assert result.returncode == 0, result.stderr[-3000:]
  again = json.loads((rerank_dir / experiments.RERANK_FILE).read_text())
  assert again["llm"]["llm_calls"] == 0 and again["llm"]["cache_hits"] == rerank["llm"]["prompts"]
  assert again["test"] == rerank["test"]
