"""The prompt cache behind the LLM: reruns, interruptions, corruption, shards."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from lagcl_jax.llm import cache as cache_lib
from lagcl_jax.llm import cached_llm
import llm_testing

PROMPTS = [f"prompt number {i} " + "x" * i for i in range(11)]


def _llm(directory, driver=None, writer="stage-shard0of1"):
  return cached_llm.CachedLLM(driver or llm_testing.FakeDriver(),
                              cache_lib.PromptCache(str(directory), writer),
                              cached_llm.StageStats())


def test_rerun_makes_no_call_and_returns_the_same(tmp_path):
  first = _llm(tmp_path)
  scores = first.score(PROMPTS, ["Yes", "No"])
  texts = first.generate(PROMPTS[:3], 5)
  embeddings = first.embed(PROMPTS[:4])
  assert first.stats.summary_line() == \
      "prompts: 18, cache hits: 0, LLM calls: 18, parse failures: 0"
  again = _llm(tmp_path)
  np.testing.assert_array_equal(again.score(PROMPTS, ["Yes", "No"]), scores)
  assert again.generate(PROMPTS[:3], 5) == texts
  np.testing.assert_array_equal(again.embed(PROMPTS[:4]), embeddings)
  assert again.stats.summary_line() == \
      "prompts: 18, cache hits: 18, LLM calls: 0, parse failures: 0"
  assert again.driver.computed == []


def test_key_covers_model_params_and_answers(tmp_path):
  _llm(tmp_path).generate(PROMPTS[:2], 5)
  for llm, call in [(_llm(tmp_path, llm_testing.FakeDriver("other")),
                     lambda l: l.generate(PROMPTS[:2], 5)),
                    (_llm(tmp_path), lambda l: l.generate(PROMPTS[:2], 6)),
                    (_llm(tmp_path), lambda l: l.score(PROMPTS[:2], ["Yes", "No"]))]:
    call(llm)
    assert llm.stats.llm_calls == 2


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
  broken = _llm(tmp_path, llm_testing.FakeDriver(batch_size=2, fail_after_batches=3))
  with pytest.raises(RuntimeError, match="interrupted"):
    broken.score(PROMPTS, ["Yes", "No"])
  assert broken.stats.llm_calls == 6
  resumed = _llm(tmp_path)
  scores = resumed.score(PROMPTS, ["Yes", "No"])
  assert (resumed.stats.cache_hits, resumed.stats.llm_calls) == (6, 5)
  np.testing.assert_array_equal(scores, _llm(tmp_path / "fresh").score(PROMPTS, ["Yes", "No"]))


def test_corrupt_and_truncated_entries_are_recomputed(tmp_path):
  reference = _llm(tmp_path).score(PROMPTS, ["Yes", "No"])
  [path] = glob.glob(str(tmp_path / "*.jsonl"))
  with open(path) as f:
    lines = f.readlines()
  entry = json.loads(lines[2])
  entry["value"][0] += 1.0  # altered value: its check no longer matches
  lines[2] = json.dumps(entry) + "\n"
  lines[5] = "{not json\n"
  lines[-1] = lines[-1][:len(lines[-1]) // 2]  # killed mid-write: no newline
  with open(path, "w") as f:
    f.writelines(lines)
  repaired = _llm(tmp_path)
  assert repaired.cache.num_corrupt == 3
  np.testing.assert_array_equal(repaired.score(PROMPTS, ["Yes", "No"]), reference)
  assert repaired.stats.llm_calls == 3
  clean = _llm(tmp_path)  # the appended lines did not fuse with the truncated one
  assert clean.cache.num_corrupt == 3
  clean.score(PROMPTS, ["Yes", "No"])
  assert clean.stats.llm_calls == 0


def test_shards_merge_by_copying_cache_files(tmp_path):
  halves = [PROMPTS[0::2], PROMPTS[1::2]]
  for shard, part in enumerate(halves):
    _llm(tmp_path / f"machine{shard}", writer=f"stage-shard{shard}of2").generate(part, 4)
  merged = tmp_path / "merged"
  merged.mkdir()
  for path in glob.glob(str(tmp_path / "machine*" / "*.jsonl")):
    shutil.copy(path, merged)
  assert len(os.listdir(merged)) == 2
  llm = _llm(merged)
  answers = llm.generate(PROMPTS, 4)
  assert llm.stats.llm_calls == 0 and llm.stats.cache_hits == len(PROMPTS)
  assert answers == _llm(tmp_path / "fresh").generate(PROMPTS, 4)


def test_cached_value_of_wrong_shape_is_recomputed(tmp_path):
  llm = _llm(tmp_path)
  llm.score(PROMPTS[:2], ["Yes", "No"])
  key = next(iter(llm.cache._values))  # pylint: disable=protected-access
  llm.cache.put_many([(key, [1.0, 2.0, 3.0])])
  again = _llm(tmp_path)
  again.score(PROMPTS[:2], ["Yes", "No"])
  assert again.stats.llm_calls == 1 and again.cache.num_corrupt == 1


def test_duplicate_prompts_are_computed_once(tmp_path):
  llm = _llm(tmp_path)
  texts = llm.generate(["same", "same", "other"], 3)
  assert texts[0] == texts[1] and llm.stats.llm_calls == 2 and llm.stats.prompts == 2
