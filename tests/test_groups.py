"""Tests for lagcl_jax.groups: group files, the grouping JSON, metadata groups, dispatch."""

import json
import os

import numpy as np
import pytest

from lagcl_jax import groups
from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset, Interactions


def write(path, text: str) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def ids(*values: str) -> np.ndarray:
  return np.array(values)


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
  """The absl warnings logged by lagcl_jax.groups during the test."""
  messages = []
  monkeypatch.setattr(groups.logging, "warning",
                      lambda message, *args: messages.append(message % args))
  return messages


def test_group_file_matches_ids_as_strings_then_by_value(tmp_path, warnings):
  path = write(tmp_path / "user_group.txt", " 12 , 3\n0007,10\n\n5,3\n99,1\n")
  result, report = groups.load_group_file(path, ids("5", "7", "12", "40"), "user")
  # Labels 1, 3, 10 -> dense 0, 1, 2 (numeric order); "40" is missing -> extra group 3.
  assert result.tolist() == [1, 2, 1, 3]
  assert result.dtype == np.int32
  assert report["covered"] == 3 and report["missing"] == 1
  assert report["coverage"] == pytest.approx(0.75)
  assert report["num_groups"] == 4 and report["groups_used"] == 3
  assert report["unknown_ids_in_file"] == 1  # 99
  assert report["labels"] == ["1", "3", "10"]
  assert len(warnings) == 1 and "LOW GROUP COVERAGE" in warnings[0] and path in warnings[0]


def test_exact_string_match_wins_over_numeric_value(tmp_path, warnings):
  path = write(tmp_path / "g.txt", "012,a\n12,b\n")
  result, report = groups.load_group_file(path, ids("12", "012"), "item")
  assert result.tolist() == [1, 0]
  assert report["labels"] == ["a", "b"] and report["coverage"] == 1.0
  assert warnings == []


def test_full_coverage_has_no_extra_group(tmp_path):
  path = write(tmp_path / "g.txt", "a,2\nb,1\n")
  result, report = groups.load_group_file(path, ids("a", "b"), "user")
  assert result.tolist() == [1, 0]
  assert report["num_groups"] == 2 and report["missing"] == 0


@pytest.mark.parametrize("bad", ["5", "5,1,2", ",1", "5,"])
def test_malformed_group_line_names_file_and_line(tmp_path, bad):
  path = write(tmp_path / "item_group.txt", "1,1\n2,1\n" + bad + "\n")
  with pytest.raises(ValueError, match=r"item_group.txt, line 3: expected `id,group`"):
    groups.load_group_file(path, ids("1"), "item")


def test_conflicting_group_for_one_id_is_an_error(tmp_path):
  path = write(tmp_path / "g.txt", "1,1\n2,1\n1,1\n1,2\n")
  with pytest.raises(ValueError, match=r"g.txt, line 4: item '1' is already in group '1' "
                                       r"\(line 1\)"):
    groups.load_group_file(path, ids("1"), "item")


def group_json(path, entries) -> str:
  return write(path, json.dumps(entries))


def test_group_json_first_listed_group_wins(tmp_path, warnings):
  path = group_json(tmp_path / "user_group.json", [
      {"group_id": "group_1", "group_name": "Noir fans", "members": ["3", "1"]},
      {"group_id": "group_2", "group_name": "Kids", "members": ["2", "3", 4]},
  ])
  result, report = groups.load_group_json(path, ids("1", "2", "3", "4", "5"), "user")
  assert result.tolist() == [0, 1, 0, 1, 2]
  assert report["names"] == ["Noir fans", "Kids"]
  assert report["labels"] == ["group_1", "group_2"]
  assert report["members_in_several_groups"] == 1
  assert report["coverage"] == pytest.approx(0.8) and len(warnings) == 1


@pytest.mark.parametrize("text, message", [
    ('[{"group_id": "g", "members": ["1"]},\n  {"group_id": }]', r"g.json, line 2: invalid"),
    ('{"group_id": "g"}', r"g.json: expected a JSON list"),
    ('[{"group_id": "g"}]', r"g.json: group entry 0 lacks"),
    ('[{"group_id": "g", "members": []}, {"group_id": "g", "members": []}]',
     r"g.json: group entry 1 repeats"),
])
def test_malformed_group_json_names_the_file(tmp_path, text, message):
  path = write(tmp_path / "g.json", text)
  with pytest.raises(ValueError, match=message):
    groups.load_group_json(path, ids("1"), "user")


def small_dataset(item_genres: list[list[str]], train: list[tuple[int, int, int]]) -> Dataset:
  users, items, labels = (np.array(c) for c in zip(*train))
  num_users = int(users.max()) + 2  # the last user has no train rows
  return Dataset(
      name="toy", user_ids=np.array([str(u) for u in range(num_users)]),
      item_ids=np.array([str(i) for i in range(len(item_genres))]),
      train=Interactions(users.astype(np.int32), items.astype(np.int32),
                         labels.astype(np.int8)),
      valid=Interactions.empty(), test=Interactions.empty(),
      user_meta=[{} for _ in range(num_users)],
      item_meta=[{"title": f"m{i}", "year": None, "genres": g}
                 for i, g in enumerate(item_genres)],
      summary={})


def slow_metadata_groups(dataset: Dataset) -> tuple[list[int], list[int]]:
  """The metadata rule written out with loops."""
  genres = sorted({g for m in dataset.item_meta for g in m["genres"]})
  item_groups = [genres.index(m["genres"][0]) if m["genres"] else len(genres)
                 for m in dataset.item_meta]
  user_groups = []
  for user in range(dataset.num_users):
    counts = [0] * len(genres)
    for u, i, y in zip(dataset.train.users, dataset.train.items, dataset.train.labels):
      if u == user and y > 0:
        for g in dataset.item_meta[i]["genres"]:
          counts[genres.index(g)] += 1
    best = max(counts)
    user_groups.append(counts.index(best) if best > 0 else len(genres))
  return user_groups, item_groups


def test_metadata_groups_against_a_slow_reference():
  dataset = small_dataset(
      [["Drama", "Action"], ["Comedy"], ["Action", "Comedy"], [], ["Western"]],
      [(0, 0, 1), (0, 1, 1), (0, 4, -1), (0, 3, 1),  # tie Action/Comedy/Drama -> Action
       (1, 1, 1), (1, 2, 1), (1, 0, -1),  # Comedy 2, Action 1
       (2, 4, -1), (2, 3, 1)])  # no liked genre -> extra group
  user_groups, item_groups, report = groups.metadata_groups(dataset)
  expected_users, expected_items = slow_metadata_groups(dataset)
  assert user_groups.tolist() == expected_users == [0, 1, 4, 4]
  assert item_groups.tolist() == expected_items == [2, 1, 0, 4, 3]
  assert report["item"]["labels"] == ["Action", "Comedy", "Drama", "Western", "(no genre)"]
  assert report["user"]["users_without_liked_genre"] == 2
  assert report["item"]["items_without_genre"] == 1


def test_build_groups_dispatch_and_flag_errors(tmp_path):
  dataset = small_dataset([["Drama"], ["Comedy"]], [(0, 0, 1), (1, 1, 1)])
  user_groups, item_groups, report = groups.build_groups(Config(groups="none"), dataset)
  assert not user_groups.any() and not item_groups.any()
  assert user_groups.shape == (3,) and item_groups.shape == (2,)
  with pytest.raises(ValueError, match="--item_group_file"):
    groups.build_groups(Config(groups="files",
                               user_group_file=write(tmp_path / "u", "0,1\n1,2\n")), dataset)
  with pytest.raises(ValueError, match="--groups='genre'"):
    groups.build_groups(Config(groups="genre"), dataset)
  config = Config(groups="files",
                  user_group_file=group_json(tmp_path / "u.json", [
                      {"group_id": "a", "members": ["0", "1"]}]),
                  item_group_file=write(tmp_path / "i.txt", "0,5\n1,6\n"))
  user_groups, item_groups, report = groups.build_groups(config, dataset)
  assert user_groups.tolist() == [0, 0, 1] and item_groups.tolist() == [0, 1]
  assert report["user"]["source"].endswith("u.json")
  user_groups, item_groups, report = groups.build_groups(Config(groups="metadata"), dataset)
  assert item_groups.tolist() == [1, 0] and report["source"] == "metadata"
  no_genres = small_dataset([[], []], [(0, 0, 1)])
  with pytest.raises(ValueError, match="--groups=metadata"):
    groups.build_groups(Config(groups="metadata"), no_genres)


def test_real_ml1m_author_groups(ml1m, ml1m_dir):
  config = Config(groups="files", user_group_file=os.path.join(ml1m_dir, "user_group.txt"),
                  item_group_file=os.path.join(ml1m_dir, "item_group.txt"))
  user_groups, item_groups, report = groups.build_groups(config, ml1m)
  for kind, found, num_groups in (("user", user_groups, 59), ("item", item_groups, 42)):
    assert report[kind]["coverage"] > 0.99
    assert report[kind]["num_groups"] == num_groups
    assert np.unique(found).size > 1  # the authors' int-vs-str defect left only group 0
  assert np.unique(user_groups).size == 59
  json_config = config.replace(user_group_file=os.path.join(ml1m_dir, "user_group.json"),
                               item_group_file=os.path.join(ml1m_dir, "item_group.json"))
  json_users, json_items, _ = groups.build_groups(json_config, ml1m)
  np.testing.assert_array_equal(json_users, user_groups)
  np.testing.assert_array_equal(json_items, item_groups)


def test_real_ml1m_metadata_groups(ml1m):
  user_groups, item_groups, report = groups.metadata_groups(ml1m)
  assert report["item"]["items_without_genre"] == 0
  assert report["item"]["groups_used"] == 18  # ML-1M's 18 genres
  assert np.unique(user_groups).size > 5


def test_group_file_of_another_data_set_is_an_error(tmp_path):
  path = write(tmp_path / "user_group.txt", "1,a\n" + "".join(f"{n},b\n" for n in range(100, 160)))
  with pytest.raises(ValueError) as error:
    groups.load_group_file(path, ids("1", "2", "3", "4"), "user")
  message = str(error.value)
  assert path in message and "only 1 of 4 users (25.0%)" in message
  assert "--min_group_coverage=0.5" in message and "60 of its ids are not in the data" in message
  _, report = groups.load_group_file(path, ids("1", "2", "3", "4"), "user", min_coverage=0.2)
  assert report["coverage"] == pytest.approx(0.25)


def test_degenerate_grouping_stops_unless_allowed(tmp_path):
  dataset = small_dataset([["Drama"], ["Comedy"]], [(0, 0, 1), (1, 1, 1)])
  config = Config(groups="files",
                  user_group_file=write(tmp_path / "u.txt", "0,a\n1,a\n2,a\n"),
                  item_group_file=write(tmp_path / "i.txt", "0,5\n1,6\n"))
  with pytest.raises(ValueError, match=r"--groups=files: every user is in the same group.*"
                                       r"--allow_degenerate_groups"):
    groups.build_groups(config, dataset)
  user_groups, _, _ = groups.build_groups(config.replace(allow_degenerate_groups=True), dataset)
  assert user_groups.tolist() == [0, 0, 0]
  one_genre = small_dataset([["Drama"], ["Drama"]], [(0, 0, 1), (1, 1, 1), (2, 0, 1)])
  with pytest.raises(ValueError, match="every item is in the same group"):
    groups.build_groups(Config(groups="metadata"), one_genre)


def test_shuffled_groups_keep_every_group_size_and_follow_the_seed(tmp_path):
  dataset = small_dataset([["Drama"], ["Comedy"], ["Drama"], ["War"]],
                          [(0, 0, 1), (1, 1, 1), (2, 2, 1), (2, 3, 1), (0, 3, 1)])
  config = Config(groups="metadata")
  users, items, _ = groups.build_groups(config, dataset)
  runs = {seed: groups.build_groups(config.replace(shuffle_groups=True, seed=seed), dataset)
          for seed in (0, 0, 1, 2, 3)}
  for shuffled_users, shuffled_items, report in runs.values():
    assert report["shuffled"]
    assert sorted(shuffled_users.tolist()) == sorted(users.tolist())
    assert sorted(shuffled_items.tolist()) == sorted(items.tolist())
  again = groups.build_groups(config.replace(shuffle_groups=True, seed=0), dataset)
  np.testing.assert_array_equal(again[1], runs[0][1])
  assert any(not np.array_equal(run[1], items) for run in runs.values())
