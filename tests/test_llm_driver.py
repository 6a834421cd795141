"""The prompt driver on a tiny random-weight model, against slow one-prompt-at-a-time references."""

import os
import shutil

import numpy as np
import pytest
import torch

from lagcl_jax.llm import driver as driver_lib
from lagcl_jax.llm import throughput
import llm_testing

PROFILE = ("Viewer profile:\nliked movies: Movie 1; Movie 2; Movie 3; Movie 4. disliked "
           "genres: Horror, Romance. Summary: likes comedies.\n\nCandidate movie: ")
PROMPTS = [PROFILE + "Movie 7", PROFILE + "Movie 12 (1990)", PROFILE + "X",
           "Name: short", "Would this viewer enjoy the candidate movie? Answer Yes or No.",
           PROFILE + "Movie 9; genres: Action, Comedy, Drama"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return llm_testing.build_tiny_model(str(tmp_path_factory.mktemp("tiny")))


def _driver(model_dir, batch_size):
  return driver_lib.Driver(model_dir, "float32", "cpu", batch_size, "You rate movies.")


def _reference_log_prob(drv, prompt, answer):
  """log P(answer | prompt) from one unpadded forward pass, summed over the answer's tokens."""
  tokenizer, model = drv._tokenizer, drv._model  # pylint: disable=protected-access
  prompt_ids = tokenizer(drv.format(prompt), add_special_tokens=False)["input_ids"]
  answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0]
  log_probs = torch.log_softmax(logits.float(), -1)
  return sum(float(log_probs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(answer_ids))


@pytest.mark.parametrize("answers", [["Yes", "No"], ["Yes", "No", "Yes, they would"]])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_score_matches_unbatched_reference(model_dir, answers, batch_size):
  drv = _driver(model_dir, batch_size)
  scores = drv.score(PROMPTS, answers)
  assert scores.shape == (len(PROMPTS), len(answers))
  assert np.all(np.isfinite(scores)) and np.all(scores < 0)
  reference = np.array([[_reference_log_prob(drv, p, a) for a in answers] for p in PROMPTS])
  np.testing.assert_allclose(scores, reference, atol=2e-4)


def test_score_is_deterministic_and_order_independent(model_dir):
  drv = _driver(model_dir, 3)
  first = drv.score(PROMPTS, ["Yes", "No"])
  np.testing.assert_array_equal(first, drv.score(PROMPTS, ["Yes", "No"]))
  reverse = drv.score(PROMPTS[::-1], ["Yes", "No"])[::-1]
  np.testing.assert_allclose(first, reverse, atol=2e-4)


def test_score_reports_each_prompt_once_when_complete(model_dir):
  drv = _driver(model_dir, 4)  # 6 prompts x 3 answers = 18 rows, split over 5 batches
  reported = {}

  def on_batch(indices, rows):
    for i, row in zip(indices.tolist(), rows):
      assert i not in reported
      reported[i] = np.array(row)

  scores = drv.score(PROMPTS, ["Yes", "No", "Yes, they would"], on_batch)
  assert sorted(reported) == list(range(len(PROMPTS)))
  for i, row in reported.items():
    np.testing.assert_array_equal(row, scores[i])


def test_generate_batched_equals_one_by_one(model_dir):
  texts = PROMPTS[:4]
  batched = _driver(model_dir, 4).generate(texts, 6)
  single = _driver(model_dir, 1)
  assert batched == [single.generate([t], 6)[0] for t in texts]
  assert batched == _driver(model_dir, 4).generate(texts, 6)
  assert any(batched) and batched != _driver(model_dir, 4).generate(texts, 1)


def test_embed_matches_single_text_mean_hidden_state(model_dir):
  drv = _driver(model_dir, 3)
  texts = ["short", "a somewhat longer profile text", "x y z", "Movie 1 (1981); genres: Drama"]
  embeddings = drv.embed(texts)
  assert embeddings.shape == (4, 32) and embeddings.dtype == np.float32
  model, tokenizer = drv._model, drv._tokenizer  # pylint: disable=protected-access
  for text, row in zip(texts, embeddings):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
      hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    np.testing.assert_allclose(row, hidden.mean(0).numpy(), atol=1e-5)


def test_plain_layout_without_chat_template(tmp_path):
  model_dir = llm_testing.build_tiny_model(str(tmp_path), chat_template=False)
  drv = driver_lib.Driver(model_dir, "float32", "cpu", 2, "Be brief.")
  assert drv.format("Hi?") == "System: Be brief.\nUser: Hi?\nAssistant:"
  assert np.all(np.isfinite(drv.score(["Hi?", "Hello?"], ["Yes", "No"])))


def test_identity_and_dtype(model_dir, tmp_path):
  assert driver_lib.resolve_dtype("float32", "cpu") == "float32"
  assert driver_lib.resolve_dtype("auto", "cpu") in ("bfloat16", "float32")
  with pytest.raises(ValueError, match="llm_dtype"):
    driver_lib.resolve_dtype("int8", "cpu")
  assert driver_lib.model_identity("org/some-model") == "org/some-model"
  # A local folder is named by base name and config, so a copy elsewhere shares the cache.
  copy = shutil.copytree(model_dir, tmp_path / "elsewhere" / os.path.basename(model_dir))
  identity = driver_lib.model_identity(model_dir)
  assert identity == driver_lib.model_identity(str(copy) + "/")
  with open(copy / "config.json", "a") as f:
    f.write("\n")
  assert driver_lib.model_identity(str(copy)) != identity
  drv = _driver(model_dir, 2)
  assert drv.identity == identity + "|float32" and not drv.is_loaded


def test_prefix_batches_keep_shared_runs_together(model_dir):
  drv = _driver(model_dir, 2)
  user_a, user_b = list(range(40)), list(range(100, 140))
  sequences = [user_a + [1], user_b + [1], user_a + [2], [7, 8], user_a + [3], user_b + [2],
               [9]]
  batches = drv._batches(sequences, by_prefix=True)  # pylint: disable=protected-access
  batches = [b.tolist() for b in batches]
  assert batches == [[0, 2], [4], [1, 5], [3, 6]]


def test_throughput_rows_and_table(model_dir):
  rows = throughput.measure(model_dir, "cpu", ("float32",), (1, 4), PROMPTS[:4], PROMPTS[3:],
                            PROMPTS[:2], 3, "unused", "You rate movies.")
  assert [(r["operation"].split(" ")[0], r["batch_size"]) for r in rows] == \
      [("score", 1), ("score", 4), ("score", 1), ("score", 4), ("generate", 1), ("generate", 4)]
  assert all(r["prompts_per_s"] > 0 and r["mean_prompt_tokens"] > 0 for r in rows)
  table = throughput.format_table(rows).splitlines()
  assert len(table) == 2 + len(rows) and table[2].startswith("| score (profile shared by 16) |")
