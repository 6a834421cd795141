"""Profiles, parsing, augmentation, grouping and reranking, each against a plain reference."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from lagcl_jax import evaluation
from lagcl_jax.llm import augment
from lagcl_jax.llm import grouping
from lagcl_jax.llm import parsing
from lagcl_jax.llm import profiles as profiles_lib
from lagcl_jax.llm import rerank
import llm_testing


@pytest.fixture
def llm(tmp_path):
  return llm_testing.fake_llm(str(tmp_path))


# --- Parsing ---------------------------------------------------------------------------------


def test_parse_group_description_formats():
  plain = parsing.parse_group_description(
      "Name: Sci-Fi Fans\nCharacteristics: space; robots; space\nReasoning: They like stars.")
  assert plain == {"group_name": "Sci-Fi Fans", "key_characteristics": ["space", "robots"],
                   "reasoning": "They like stars."}
  markdown = parsing.parse_group_description(
      "**Name:** \"Night Owls\"\n**Key characteristics:**\n- horror\n- thrillers\n"
      "**Reasoning:** dark films\nand more")
  assert markdown == {"group_name": "Night Owls", "key_characteristics": ["horror", "thrillers"],
                      "reasoning": "dark films and more"}
  copied = "Name: <a short name for the group>\nCharacteristics: <trait>; <trait>\nReasoning: x"
  for bad in ["", "I cannot help with that.", "Name: Only a name", "Characteristics: a; b",
              copied, "Name: **[Your Name]**\nCharacteristics: fun"]:
    assert parsing.parse_group_description(bad) is None


def test_clean_summary():
  assert parsing.clean_summary("  Likes   dramas.\n\nSecond paragraph.") == "Likes dramas."
  assert parsing.clean_summary("Likes dramas. Also likes com") == "Likes dramas."
  assert parsing.clean_summary("no stop at all") == "no stop at all"
  assert parsing.clean_summary(" \n ") is None
  assert len(parsing.clean_summary("word " * 200)) <= parsing.MAX_SUMMARY_CHARS


def test_resolve_ids_drops_and_counts():
  index = {"1": 0, "2": 1, "30": 2}
  internal, counts = parsing.resolve_ids(["1", 2, "2", "99", None, "", True, " 30 ", 1.5],
                                         index)
  assert internal.tolist() == [0, 1, -1, -1, -1, -1, -1, 2, -1]
  assert counts == {"invalid": 4, "unknown": 1, "duplicate": 1}


# --- Profiles --------------------------------------------------------------------------------


def test_user_facts_use_train_only():
  dataset = llm_testing.movie_dataset()
  facts = profiles_lib.user_facts(dataset, np.arange(dataset.num_users), 20, "movie")
  for u, text in enumerate(facts):
    for split, present in ((dataset.train, True), (dataset.test, False), (dataset.valid, False)):
      for i in split.items[split.users == u]:
        assert (f"{dataset.item_meta[i]['title']};" in text + ";" or
                f"{dataset.item_meta[i]['title']}." in text) == present
  assert facts[0].startswith("User: male, age 20, writer.\nIn training: ")
  assert "Liked genres:" in facts[0]


def test_build_and_load_profiles_round_trip(tmp_path, llm):
  dataset = llm_testing.movie_dataset()
  record = profiles_lib.build_profiles(dataset, np.array([0, 2]), llm, 5, 10, "movie")
  assert [u["user_id"] for u in record["users"]] == ["u00", "u02"]
  assert len(record["items"]) == dataset.num_items and llm.stats.llm_calls == 2
  path = tmp_path / "profiles.json"
  path.write_text(json.dumps(record))
  profiles = profiles_lib.load_profiles(str(path), dataset, 5, "movie")
  assert profiles.user_text[0].endswith("Summary: " + record["users"][0]["summary"])
  template = profiles_lib.template_profiles(dataset, 5, "movie")
  assert profiles.user_text[1] == template.user_text[1]  # not in the file: template kept
  assert profiles.item_text == template.item_text
  assert profiles.report["users_from_file"] == 2


def test_load_paper_merged_profiles_layout(tmp_path):
  dataset = llm_testing.movie_dataset()
  paper = [
      {"user_id": "u01", "user_profile": {"summarization": "Loves noir."},
       "positive_items": [{"item_id": "101", "item_profile": {"summarization": "A noir."}},
                          {"item_id": "999", "item_profile": "unknown item"}],
       "negative_items": [{"item_id": "101", "item_profile": "repeat"},
                          {"item_id": "102", "item_profile": ""}]},
      {"user_id": "u01", "user_profile": {"summarization": "duplicate"}},
      {"user_id": "nobody", "user_profile": {"summarization": "x"}},
      {"user_id": "u03", "user_profile": {"summarization": "  "}},
      "not a dict",
  ]
  path = tmp_path / "merged_profiles.json"
  path.write_text(json.dumps(paper))
  profiles = profiles_lib.load_profiles(str(path), dataset, 5, "movie")
  template = profiles_lib.template_profiles(dataset, 5, "movie")
  assert profiles.user_text[1] == "Loves noir." and profiles.item_text[1] == "A noir."
  assert profiles.user_text[3] == template.user_text[3]
  assert profiles.item_text[2] == template.item_text[2]
  report = profiles.report
  assert (report["user_duplicate_ids"], report["user_unknown_ids"],
          report["user_empty_profiles"]) == (1, 1, 1)
  assert (report["item_duplicate_ids"], report["item_unknown_ids"],
          report["item_empty_profiles"]) == (1, 1, 1)


def test_profiles_file_errors(tmp_path):
  dataset = llm_testing.movie_dataset()
  bad = tmp_path / "bad.json"
  bad.write_text("{\n  \"users\": [")
  with pytest.raises(ValueError, match="bad.json, line 2"):
    profiles_lib.load_profiles(str(bad), dataset, 5, "movie")
  with pytest.raises(FileNotFoundError, match="profiles_file"):
    profiles_lib.profiles_for_stage(str(tmp_path / "missing.json"), True, dataset, 5,
                                   "movie")
  fallback = profiles_lib.profiles_for_stage(str(tmp_path / "missing.json"), False, dataset, 5,
                                              "movie")
  assert fallback.user_text == profiles_lib.template_profiles(dataset, 5, "movie").user_text


# --- Augmentation ----------------------------------------------------------------------------


def test_candidates_are_unseen_top_then_random():
  dataset = llm_testing.movie_dataset()
  rng = np.random.default_rng(0)
  user_emb = rng.normal(size=(dataset.num_users, 4)).astype(np.float32)
  item_emb = rng.normal(size=(dataset.num_items, 4)).astype(np.float32)
  users = np.array([0, 3, 5], np.int32)
  candidates = augment.candidate_items(dataset, users, user_emb, item_emb, 4, 5, seed=7)
  for u, items in zip(users, candidates):
    known = set()
    for split in (dataset.train, dataset.valid):  # test rows are not consulted
      known |= set(split.items[split.users == u].tolist())
    unseen = [i for i in np.argsort(-(user_emb[u] @ item_emb.T), kind="stable") if i not in known]
    assert items[:4].tolist() == unseen[:4]
    assert len(set(items.tolist())) == 9 and not known & set(items.tolist())
  alone = augment.candidate_items(dataset, users[1:2], user_emb, item_emb, 4, 5, seed=7)
  np.testing.assert_array_equal(alone[0], candidates[1])  # independent of the other users


def test_choose_balanced():
  margins = np.array([0.5, np.nan, -2.0, 3.0, 1.0, -1.0, 0.0])
  liked, disliked = augment.choose_balanced(margins, 2)
  assert liked.tolist() == [3, 4] and disliked.tolist() == [5, 2]
  liked, disliked = augment.choose_balanced(margins[:3], 2)  # two finite margins
  assert liked.tolist() == [0] and disliked.tolist() == [2]
  assert [a.size for a in augment.choose_balanced(np.array([np.nan, 1.0]), 3)] == [0, 0]


def test_augment_rows_and_file(tmp_path, llm):
  dataset = llm_testing.movie_dataset()
  profiles = profiles_lib.template_profiles(dataset, 5, "movie")
  users = np.array([1, 4], np.int32)
  candidates = augment.candidate_items(dataset, users, *augment.popularity_embeddings(dataset),
                                       3, 4, seed=0)
  rows = augment.augment(llm, profiles, users, candidates, k=2)
  assert len(rows) == 8 and llm.stats.llm_calls == 14
  for u in users:
    mine = rows.select(rows.users == u)
    assert (mine.labels > 0).sum() == 2 and (mine.labels < 0).sum() == 2
  path = tmp_path / "augment.txt"
  augment.write_augmentation(str(path), dataset, rows, {"model": "fake"})
  lines = path.read_text().splitlines()
  assert lines[0].split("\t")[0] == "u01" and {l.split("\t")[2] for l in lines} == {"1", "-1"}
  provenance = json.loads((tmp_path / "augment.provenance.json").read_text())
  keys = set(zip(dataset.test.users.tolist(), dataset.test.items.tolist()))
  in_test = [(u, i) in keys for u, i in zip(rows.users.tolist(), rows.items.tolist())]
  assert provenance == {"model": "fake", "rows": 8, "positives": 4, "negatives": 4,
                        "test_pair_rows": sum(in_test),
                        "test_pair_positives": sum(t and l > 0 for t, l in
                                                   zip(in_test, rows.labels.tolist())),
                        "test_pair_negatives": sum(t and l < 0 for t, l in
                                                   zip(in_test, rows.labels.tolist()))}


# --- Grouping --------------------------------------------------------------------------------


def _reference_assignment(points, centroids):
  return np.array([np.argmin([np.sum((p - c) ** 2) for c in centroids]) for p in points])


def test_kmeans_recovers_blobs_and_is_a_fixed_point():
  rng = np.random.default_rng(1)
  centres = rng.normal(scale=10, size=(4, 3))
  truth = np.repeat(np.arange(4), 25)
  points = centres[truth] + rng.normal(size=(100, 3))
  labels, centroids = grouping.kmeans(points, 4, seed=0)
  np.testing.assert_array_equal(labels, _reference_assignment(points, centroids))
  for c in range(4):
    np.testing.assert_allclose(centroids[c], points[labels == c].mean(0))
  assert all(len(set(labels[truth == t])) == 1 for t in range(4))
  np.testing.assert_array_equal(labels, grouping.kmeans(points, 4, seed=0)[0])


def test_kmeans_edge_cases():
  labels, centroids = grouping.kmeans(np.ones((5, 2)), 3, seed=0)  # identical points
  assert set(labels.tolist()) == {0, 1, 2} and centroids.shape == (3, 2)
  labels, centroids = grouping.kmeans(np.eye(2), 5, seed=0)  # more groups than points
  assert sorted(labels.tolist()) == [0, 1] and centroids.shape == (2, 2)
  assert grouping.kmeans(np.zeros((0, 3)), 2, seed=0)[0].size == 0


def test_semantic_groups_layout_and_files(tmp_path, llm):
  texts = [f"text {'a' * (i % 3)} {i}" for i in range(9)]
  raw_ids = [f"id{i}" for i in range(9)]
  groups, report = grouping.semantic_groups(llm, "item", raw_ids, texts, 3, 0, 2, 50, 20,
                                            "wine")
  assert [g["group_id"] for g in groups] == ["group_1", "group_2", "group_3"]
  assert sorted(m for g in groups for m in g["members"]) == sorted(raw_ids)
  assert llm.stats.parse_failures == 3  # the fake driver's answers are not descriptions
  assert groups[0]["group_name"] == "Item group 1" and groups[0]["key_characteristics"] == []
  assert [g["description"] for g in groups] == ["fallback"] * 3
  assert (report["requested_groups"], report["groups"], report["parse_failures"]) == (3, 3, 3)
  assert [f["group_id"] for f in report["fallbacks"]] == ["group_1", "group_2", "group_3"]
  assert report["fallbacks"][0]["answer"].startswith("answer to ")
  text_path, json_path = grouping.write_groups(str(tmp_path), "item", groups)
  from lagcl_jax import groups as groups_lib  # pylint: disable=g-import-not-at-top
  ids = np.array(raw_ids)
  from_text, report = groups_lib.load_group_file(text_path, ids, "item")
  from_json, _ = groups_lib.load_group_json(json_path, ids, "item")
  assert report["coverage"] == 1.0 and report["num_groups"] == 3
  np.testing.assert_array_equal(from_text, from_json)


# --- Reranking -------------------------------------------------------------------------------


def test_normalise_against_reference():
  scores = np.array([[1.0, 3.0, 2.0, np.nan], [5.0, 5.0, 5.0, 5.0], [-np.inf, 0.0, 4.0, 2.0]])
  minmax = rerank.normalise(scores, "minmax")
  np.testing.assert_allclose(minmax[0], [0.0, 1.0, 0.5, 0.0])
  np.testing.assert_allclose(minmax[1], [0.0] * 4)
  np.testing.assert_allclose(minmax[2], [0.0, 0.0, 1.0, 0.5])
  z = rerank.normalise(scores, "zscore")
  row = np.array([1.0, 3.0, 2.0])
  np.testing.assert_allclose(z[0, :3], (row - row.mean()) / row.std())
  assert z[0, 3] == z[0, :3].min()
  with pytest.raises(ValueError, match="rerank_normalisation"):
    rerank.normalise(scores, "rank")


def _candidates(items, cf, relevant_items, num_items=10):
  rows = [(r, i) for r, its in enumerate(relevant_items) for i in its]
  relevant = sp.csr_matrix((np.ones(len(rows), bool), ([r for r, _ in rows], [i for _, i in rows])),
                           shape=(len(items), num_items))
  return rerank.Candidates(np.arange(len(items), dtype=np.int32), np.array(items, np.int32),
                           np.array(cf, np.float32), relevant)


def test_fuse_extremes_and_padding():
  c = _candidates([[1, 2, 3, 4]], [[4.0, 3.0, 2.0, -np.inf]], [[3]])
  llm = np.array([[0.0, 1.0, 2.0, 9.0]])
  assert rerank.fuse(c, llm, 1.0, "minmax").tolist() == [[1, 2, 3, 4]]
  assert rerank.fuse(c, llm, 0.0, "minmax").tolist() == [[3, 2, 1, 4]]


def test_alpha_is_chosen_on_validation_only():
  # Validation: the LLM is wrong (CF order is right); test: the LLM is right.
  valid = _candidates([[1, 2, 3]], [[3.0, 2.0, 1.0]], [[1]])
  test = _candidates([[4, 5, 6]], [[3.0, 2.0, 1.0]], [[6]])
  llm = np.array([[0.0, 1.0, 2.0]])
  result = rerank.rerank_evaluation(valid, llm, test, llm, (0.0, 0.5, 1.0), "minmax", (1, 3),
                                    "ndcg@3")
  assert result.metrics["alpha"] == 1.0
  assert result.metrics["test"]["reranked"] == result.metrics["test"]["cf"]
  flipped = rerank.rerank_evaluation(test, llm, valid, llm, (0.0, 0.5, 1.0), "minmax", (1, 3),
                                     "ndcg@3")
  assert flipped.metrics["alpha"] == 0.0 and flipped.test_reranked.tolist() == [[3, 2, 1]]
  assert flipped.metrics["valid"]["reranked"]["recall@1"] == 1.0
  assert flipped.test_per_user["ndcg@3"].tolist() == [flipped.metrics["test"]["reranked"]["ndcg@3"]]


class _Run:
  """The parts of a TrainedRun that reranking reads."""

  def __init__(self, dataset, config, seed=0):
    rng = np.random.default_rng(seed)
    self.dataset, self.config = dataset, config
    self.user_embeddings = rng.normal(size=(dataset.num_users, 4)).astype(np.float32)
    self.item_embeddings = rng.normal(size=(dataset.num_items, 4)).astype(np.float32)


def test_rerank_run_with_alpha_one_reproduces_evaluation(tmp_path, llm):
  from lagcl_jax.config import Config  # pylint: disable=g-import-not-at-top
  dataset = llm_testing.movie_dataset()
  run = _Run(dataset, Config(top_k=(5, 10), select_metric="valid/ndcg@10"))
  profiles = profiles_lib.template_profiles(dataset, 5, "movie")
  result = rerank.rerank_run(run, llm, profiles, 10, (1.0,), "minmax")
  expected = evaluation.evaluate(run.user_embeddings, run.item_embeddings, dataset, "test",
                                 (5, 10))
  for name in ("cf", "reranked"):
    for key, value in result.metrics["test"][name].items():
      assert value == pytest.approx(expected[key])
  users, per_user = evaluation.evaluate_per_user(run.user_embeddings, run.item_embeddings,
                                                 dataset, "test", (5, 10))
  assert result.test.users.tolist() == users.tolist()
  for key, values in per_user.items():  # Per test user, as in a run's per_user_test.npz.
    np.testing.assert_allclose(result.test_per_user[key], values)
  calls = llm.stats.llm_calls
  assert 0 < calls <= 2 * 10 * dataset.num_users
  partial = rerank.rerank_run(run, llm, profiles, 10, (0.0, 1.0), "minmax",
                              keep_users=np.array([0, 1, 2]))
  assert partial.test.users.tolist() == [0, 1, 2] and llm.stats.llm_calls == calls
  path = tmp_path / "rerank.tsv"
  rerank.write_reranked(str(path), dataset, partial)
  lines = path.read_text().splitlines()
  assert lines[0] == "user\trank\titem\tcf_score\tllm_score" and len(lines) == 31
  with pytest.raises(ValueError, match="rerank_top_n"):
    rerank.rerank_run(run, llm, profiles, 5, (1.0,), "minmax")
