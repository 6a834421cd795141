"""The LLM stages on any domain: item text from whatever metadata the data has, the item noun in
every prompt, net category preference, group reports, augmentation candidates that ignore the
test split, and --stage=all end to end on a wine data set with a tiny random model."""

import collections
import json
import logging
import os

import numpy as np
import pytest

from lagcl_jax import data as data_lib
from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset
from lagcl_jax.llm import augment
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import grouping
from lagcl_jax.llm import metadata_text
from lagcl_jax.llm import profiles as profiles_lib
from lagcl_jax.llm import prompts
from lagcl_jax.llm import stages
from lagcl_jax.llm.options import LLMOptions
import llm_testing

TYPES = ["Red", "White", "Rose", "Sparkling"]
FOODS = ["Beef", "Pasta", "Shellfish", "Cheese", "Poultry"]


def wine_meta(i: int) -> dict:
  """An X-Wines-like row: ids, a name, categories, Python-style list strings, a URL, a number."""
  return {"WineID": str(100 + i), "WineName": f"Vinho {i}", "Type": TYPES[i % 4],
          "Grapes": f"['Grape {i % 3}']",
          "Harmonize": str([FOODS[i % 5], FOODS[(i + 2) % 5]]), "ABV": 12.0 + i % 3,
          "RegionID": str(1000 + i % 2), "RegionName": f"Region {i % 2}",
          "Website": "http://winery.example"}


def wine_dataset() -> Dataset:
  """llm_testing.movie_dataset's interactions with wine metadata and no user metadata."""
  movies = llm_testing.movie_dataset()
  return Dataset(name="ratings", user_ids=movies.user_ids, item_ids=movies.item_ids,
                 train=movies.train, valid=movies.valid, test=movies.test,
                 user_meta=[{}] * movies.num_users,
                 item_meta=[wine_meta(i) for i in range(movies.num_items)], summary={})


@pytest.fixture
def llm(tmp_path):
  return llm_testing.fake_llm(str(tmp_path))


# --- Item and user text ----------------------------------------------------------------------


def test_movielens_item_text_is_unchanged():
  meta = {"title": "Toy Story (1995)", "year": 1995, "genres": ["Animation", "Comedy"]}
  assert metadata_text.item_text(meta, "1", "movie") == \
      "Toy Story (1995); genres: Animation, Comedy"
  assert metadata_text.item_text({"title": "Heat", "year": 1995}, "2", "movie") == "Heat (1995)"


def test_wine_item_text_uses_its_own_fields():
  text = metadata_text.item_text(wine_meta(1), "101", "wine")
  assert text == ("Vinho 1; type: White; grapes: Grape 1; harmonize: Pasta, Cheese; abv: 13.0; "
                  "region name: Region 1")
  assert "movie" not in text.lower()
  assert metadata_text.item_text({"name": "Björk", "url": "http://last.fm/x"}, "7",
                                 "artist") == "Björk"
  long_list = {"name": "x", "tags": [f"t{i}" for i in range(10)]}
  assert metadata_text.item_text(long_list, "1", "song") == \
      "x; tags: t0, t1, t2, t3, t4, t5, ..."


def test_reader_copies_of_title_and_genres_are_shown_once():
  # The table reader keeps every column and adds `title` and `genres` copies of two of them.
  metas = [{**wine_meta(i), "title": f"Vinho {i}", "genres": [TYPES[i % 4]]} for i in range(8)]
  metas[0]["WineName"] = metas[0]["title"] = "Red"  # a wine named like its type
  assert metadata_text.item_text(metas[1], "101", "wine") == \
      metadata_text.item_text(wine_meta(1), "101", "wine")
  assert metadata_text.category_fields(metas) == ["Type", "Grapes", "Harmonize", "RegionName"]
  metas[0]["genres"] = ["White"]  # genres no longer copies Type on every item: both shown
  assert metadata_text.category_fields(metas) == ["Type", "Grapes", "Harmonize", "RegionName",
                                                  "genres"]
  assert metadata_text.item_text({"name": "Björk", "title": "Björk", "pictureURL": "x.jpg"}, "1",
                                 "artist") == "Björk"


def test_item_without_text_says_so_and_gives_counts():
  text = metadata_text.item_text({"ArtistID": "17", "homepage": ""}, "17", "item", 34, 2)
  assert text == ("An item with no title or description in the data (id 17); in training 34 "
                  "users liked it and 2 disliked it")
  assert not metadata_text.has_text({"ArtistID": "17"})
  assert metadata_text.item_text({"tags": ["rock", "indie"]}, "17", "song") == \
      "an untitled song (id 17); tags: rock, indie"
  dataset = wine_dataset()
  dataset.item_meta = [{}] * dataset.num_items
  profiles = profiles_lib.template_profiles(dataset, 5, "song")
  liked = np.bincount(dataset.train.items[dataset.train.labels > 0],
                      minlength=dataset.num_items)
  assert profiles.item_text[3].startswith("A song with no title or description in the data "
                                          f"(id 103); in training {liked[3]} users liked")
  assert all("movie" not in t for t in profiles.user_text + profiles.item_text)
  assert all("Liked songs:" not in t for t in profiles.user_text)  # no title to list
  assert profiles_lib.text_report(dataset)["items_without_text"] == dataset.num_items


def test_category_fields_and_nouns():
  metas = [wine_meta(i) for i in range(8)]
  assert metadata_text.category_fields(metas) == ["Type", "Grapes", "Harmonize", "RegionName"]
  assert metadata_text.category_fields(llm_testing.movie_dataset().item_meta) == ["genres"]
  assert [metadata_text.plural(n) for n in ("movie", "wine", "story", "day", "glass")] == \
      ["movies", "wines", "stories", "days", "glasses"]
  movies = llm_testing.movie_dataset()
  for name, meta, noun in (("ml-100k", [{}], "movie"), ("ml-1m", [{}], "movie"),
                           ("lagcl", movies.item_meta, "movie"), ("lagcl", [{}], "item"),
                           ("ratings", [wine_meta(0)], "item")):
    movies.name, movies.item_meta = name, meta
    assert metadata_text.default_item_noun(movies) == noun
  assert stages.item_noun(LLMOptions(item_noun="wine"), movies) == "wine"


def _reference_net(dataset, user, field):
  """Liked and disliked categories of `field` by net count, counted the slow way."""
  train = dataset.train
  net, up, down = collections.Counter(), collections.Counter(), collections.Counter()
  for u, i, label in zip(train.users, train.items, train.labels):
    if u == user:
      for c in metadata_text.item_categories(dataset.item_meta[i], field):
        net[c] += int(label)
        (up if label > 0 else down)[c] += 1
  liked = sorted([c for c in net if net[c] > 0], key=lambda c: (-net[c], -up[c], c))[:3]
  disliked = sorted([c for c in net if net[c] < 0], key=lambda c: (net[c], -down[c], c))[:2]
  return liked, disliked


def test_net_preference_against_reference():
  for dataset in (wine_dataset(), llm_testing.movie_dataset(seed=3)):
    noun = "wine" if dataset.name == "ratings" else "movie"
    facts = profiles_lib.user_facts(dataset, np.arange(dataset.num_users), 5, noun)
    for u, text in enumerate(facts):
      for field in metadata_text.category_fields(dataset.item_meta):
        label = metadata_text.field_label(field)
        liked, disliked = _reference_net(dataset, u, field)
        assert not set(liked) & set(disliked)
        lines = dict(line.split(": ", 1) for line in text.splitlines())
        assert lines.get(f"Liked {label}", ".")[:-1].split(", ") == (liked or [""])
        assert lines.get(f"Disliked {label}", ".")[:-1].split(", ") == (disliked or [""])


def test_prompts_name_the_item_noun():
  dataset = wine_dataset()
  profiles = profiles_lib.template_profiles(dataset, 5, "wine")
  assert profiles.user_text[0].startswith("In training: ") and "Liked wines: " in \
      profiles.user_text[0]
  texts = [prompts.system_prompt("wine"), prompts.summary_prompt(profiles.user_text[0], "wine"),
           prompts.preference_prompt(profiles.user_text[0], profiles.item_text[0], "wine"),
           prompts.group_prompt("item", profiles.item_text[:2], "wine"),
           prompts.group_prompt("user", profiles.user_text[:2], "wine")]
  assert all("movie" not in t.lower() and "viewer" not in t.lower() for t in texts)
  assert "wine recommendation" in texts[0] and "taste in wines" in texts[1]
  assert texts[2].endswith("Candidate wine: " + profiles.item_text[0])
  assert "These wines were grouped" in texts[3] and "These users were grouped" in texts[4]


# --- Groups and augmentation -----------------------------------------------------------------


def test_fewer_members_than_groups_warns_and_caps(llm, caplog):
  with caplog.at_level(logging.WARNING):
    groups, report = grouping.semantic_groups(llm, "user", ["a", "b"], ["one", "two texts"], 5,
                                              0, 2, 10, 8, "wine")
  assert len(groups) == 2 and report["requested_groups"] == 5 and report["groups"] == 2
  assert any("only 2 users for --num_user_groups=5" in r.getMessage() for r in caplog.records)


def test_candidates_ignore_the_test_split():
  dataset = llm_testing.movie_dataset()
  user = 2
  test_item = int(dataset.test.items[dataset.test.users == user][0])
  valid_item = int(dataset.valid.items[dataset.valid.users == user][0])
  item_emb = np.zeros((dataset.num_items, 1), np.float32)
  item_emb[[test_item, valid_item], 0] = [5.0, 9.0]  # the two best-scored items
  user_emb = np.ones((dataset.num_users, 1), np.float32)
  top = augment.candidate_items(dataset, np.array([user]), user_emb, item_emb, 1, 0, 0)[0]
  assert top.tolist() == [test_item]  # valid is excluded, test is not looked at
  everything = augment.candidate_items(dataset, np.array([user]), user_emb, item_emb, 0,
                                       dataset.num_items, 0)[0]
  seen = set(dataset.train.items[dataset.train.users == user].tolist()) | \
      set(dataset.valid.items[dataset.valid.users == user].tolist())
  assert set(everything.tolist()) == set(range(dataset.num_items)) - seen


# --- --stage=all on a wine data set ----------------------------------------------------------


def test_stage_all_on_wines_is_resumable_and_never_says_movie(tmp_path, monkeypatch):
  model = llm_testing.build_tiny_model(str(tmp_path / "tiny"))
  dataset = wine_dataset()
  monkeypatch.setattr(data_lib, "load_dataset", lambda config: dataset)
  seen = []  # every prompt and system prompt the stages ask for
  run = cached_llm.CachedLLM._run  # pylint: disable=protected-access

  def recording_run(self, op, inputs, *args):
    seen.extend(inputs + [self.driver.system_prompt])
    return run(self, op, inputs, *args)

  monkeypatch.setattr(cached_llm.CachedLLM, "_run", recording_run)
  options = LLMOptions(
      llm_model=model, llm_dtype="float32", llm_device="cpu", llm_batch_size=4,
      llm_max_new_tokens=4, group_max_new_tokens=6, llm_dir=str(tmp_path / "out"),
      max_users=5, top_candidates=2, random_candidates=2, k_augment=1, num_user_groups=8,
      num_item_groups=3, item_noun="wine")
  first = stages.run_all(Config(), options)
  assert [line.split(":")[0] for line in first.splitlines()] == ["profiles", "augment", "groups"]
  assert "LLM calls: 0" not in first
  second = stages.run_all(Config(), options)
  assert second.count("LLM calls: 0,") == 3
  out = options.llm_dir
  for name in ("profiles.json", "augment.txt", "augment.provenance.json", "user_group.txt",
               "item_group.json", "groups.provenance.json"):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, "groups.provenance.json")) as f:
    provenance = json.load(f)
  assert provenance["item_noun"] == "wine"
  user_report = provenance["user_groups"]
  assert (user_report["requested_groups"], user_report["groups"]) == (8, 5)  # capped
  assert provenance["parse_failures"] == \
      user_report["parse_failures"] + provenance["item_groups"]["parse_failures"]
  assert len(provenance["item_groups"]["fallbacks"]) == \
      provenance["item_groups"]["parse_failures"]
  with open(os.path.join(out, "augment.provenance.json")) as f:
    assert {"test_pair_rows", "test_pair_positives"} <= set(json.load(f))
  assert any("Candidate wine: Vinho" in text for text in seen)
  assert not any("movie" in text.lower() for text in seen)
  with open(os.path.join(out, "profiles.json")) as f:
    profiles = json.load(f)
  assert profiles["items"][1]["profile"].startswith("Vinho 1; type: White")


def test_real_movielens_profiles(ml100k_dir):
  # ML-100K item 267 is titled "unknown" with genre "unknown": genres must stay a category.
  dataset = data_lib.load_dataset(Config(dataset="ml-100k", data_dir=ml100k_dir))
  assert metadata_text.category_fields(dataset.item_meta) == ["genres"]
  assert metadata_text.default_item_noun(dataset) == "movie"
  facts = profiles_lib.user_facts(dataset, np.arange(20), 8, "movie")
  assert all("Liked genres: " in text or "Disliked genres: " in text for text in facts)
  assert profiles_lib.text_report(dataset)["items_without_text"] == 0
