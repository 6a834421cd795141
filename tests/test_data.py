"""Tests for lagcl_jax.data: readers, bad input, splits, zips, downloads and the real data."""

import hashlib
import io
import math
import os
import urllib.error
import zipfile

import numpy as np
import pytest

from lagcl_jax import data
from lagcl_jax import evaluation
from lagcl_jax import movielens
from lagcl_jax import splits
from lagcl_jax.config import Config


def write(path, text: str, encoding: str = "utf-8") -> str:
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)
  return str(path)


def paper_config(tmp_path, train: str, test: str, **changes) -> Config:
  """A lagcl config for the given file contents, without validation unless changed."""
  return Config(dataset="lagcl", train_file=write(tmp_path / "train.txt", train),
                test_file=write(tmp_path / "test.txt", test),
                valid_fraction=0.0).replace(**changes)


def pairs(dataset, split: str) -> set[tuple[str, str, int]]:
  rows = getattr(dataset, split)
  return {(dataset.user_ids[u], dataset.item_ids[i], int(y))
          for u, i, y in zip(rows.users, rows.items, rows.labels)}


# --- The paper's format ----------------------------------------------------------------------


def test_paper_format_reads_tabs_spaces_crlf_and_blank_lines(tmp_path):
  config = paper_config(tmp_path, "\ufeff10\t5\t1\r\n2 7  -1\n\n2\t5\t1\n",
                        "2\t9\t1\n10 7 -1\n")
  dataset = data.load_dataset(config)
  assert dataset.user_ids.tolist() == ["2", "10"]  # numeric order, kept as strings
  assert dataset.item_ids.tolist() == ["5", "7", "9"]
  assert pairs(dataset, "train") == {("10", "5", 1), ("2", "7", -1), ("2", "5", 1)}
  assert pairs(dataset, "test") == {("2", "9", 1), ("10", "7", -1)}
  assert dataset.train.users.dtype == np.int32 and dataset.train.labels.dtype == np.int8
  assert dataset.user_meta == [{}, {}] and dataset.item_meta == [{}, {}, {}]


def test_non_numeric_ids_sort_lexicographically(tmp_path):
  dataset = data.load_dataset(paper_config(tmp_path, "b x 1\na10 y 1\n", "a9 x -1\n"))
  assert dataset.user_ids.tolist() == ["a10", "a9", "b"]
  assert dataset.item_ids.tolist() == ["x", "y"]


@pytest.mark.parametrize("bad_line, reason", [
    ("3 4", "expected 3 fields, found 2"),
    ("3 4 1 9", "expected 3 fields, found 4"),
    ("3 4 yes", "label 'yes' is not 1 or -1; if this is a rating file, read it with "
                "--dataset=ratings --like_threshold="),
    ("3 4 0", "label '0' is not 1 or -1"),
    ("3 4 2", "label '2' is not 1 or -1"),
    ("3 4 2.00", "label '2.00' is not 1 or -1"),
    ("3 4 1.0", "label '1.0' mixes float spellings"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad_line, reason):
  config = paper_config(tmp_path, "1 1 1\n\n" + bad_line + "\n2 2 -1\n", "1 2 1\n")
  with pytest.raises(ValueError) as error:
    data.load_dataset(config)
  assert "train.txt, line 3" in str(error.value)
  assert reason in str(error.value)


def test_numeric_label_spellings_are_accepted(tmp_path):
  dataset = data.load_dataset(paper_config(tmp_path, "1 1 1.0\n1 2 -1.0\n", "1 3 +1\n"))
  assert pairs(dataset, "train") == {("1", "1", 1), ("1", "2", -1)}
  assert pairs(dataset, "test") == {("1", "3", 1)}


def test_skip_bad_rows_counts_and_reports_locations(tmp_path):
  config = paper_config(tmp_path, "1 1 1\n1 2 0\n1 3\n1 4 x\n2 1 -1\n", "1 5 2\n2 5 1\n",
                        skip_bad_rows=True, max_bad_fraction=1.0)
  dataset = data.load_dataset(config)
  assert pairs(dataset, "train") == {("1", "1", 1), ("2", "1", -1)}
  assert pairs(dataset, "test") == {("2", "5", 1)}
  summary = dataset.summary
  assert summary["skipped_rows"] == 4
  assert len(summary["skipped_examples"]) == 4
  assert any("train.txt, line 2" in e for e in summary["skipped_examples"])
  assert any("test.txt, line 1" in e for e in summary["skipped_examples"])


def test_duplicates_keep_the_last_row_and_are_counted(tmp_path):
  dataset = data.load_dataset(paper_config(
      tmp_path, "1 1 1\n1 2 1\n1 1 -1\n1 1 1\n1 2 -1\n", "1 3 1\n1 3 -1\n"))
  assert pairs(dataset, "train") == {("1", "1", 1), ("1", "2", -1)}
  assert pairs(dataset, "test") == {("1", "3", -1)}
  assert dataset.summary["duplicate_rows"] == 4


def test_train_test_overlap_is_dropped_from_test_and_counted(tmp_path):
  dataset = data.load_dataset(paper_config(tmp_path, "1 1 1\n1 2 -1\n", "1 1 1\n1 3 1\n"))
  assert pairs(dataset, "test") == {("1", "3", 1)}
  assert dataset.summary["train_test_overlap"] == 1


def test_cold_items_and_users_without_train_positives_are_counted(tmp_path):
  # User 2 has only a dislike in train; items 8 and 9 never occur in train.
  dataset = data.load_dataset(paper_config(
      tmp_path, "1 1 1\n1 2 -1\n2 1 -1\n3 1 1\n", "1 8 1\n2 9 1\n2 8 -1\n3 2 -1\n"))
  summary = dataset.summary
  assert summary["cold_test_items"] == 2 and summary["cold_test_rows"] == 3
  assert summary["test_users"] == 3
  assert summary["test_users_with_positive"] == 2
  assert summary["test_users_without_train_positives"] == 1
  assert summary["train_positives"] == 2 and summary["train_negatives"] == 2
  assert summary["test_positives"] == 2 and summary["test_negatives"] == 2
  text = data.format_summary(summary)
  assert "cold_test_items" in text and "test_users_with_positive" in text


def test_bad_flags_are_named(tmp_path):
  with pytest.raises(ValueError, match="--train_file"):
    data.load_dataset(Config(dataset="lagcl", test_file="x"))
  with pytest.raises(FileNotFoundError, match="--test_file"):
    data.load_dataset(Config(dataset="lagcl", train_file=write(tmp_path / "t", "1 1 1\n"),
                             test_file=str(tmp_path / "missing.txt")))
  with pytest.raises(ValueError, match="--dataset"):
    data.load_dataset(Config(dataset="netflix"))
  with pytest.raises(FileNotFoundError, match="--metadata_dir"):
    data.load_dataset(paper_config(tmp_path, "1 1 1\n", "1 2 1\n",
                                   metadata_dir=str(tmp_path / "nowhere")))


# --- Augmentation ----------------------------------------------------------------------------


def test_augment_rows_are_added_to_train(tmp_path):
  augment = write(tmp_path / "augment.txt", "1 3 1\n2 1 -1\n1 1 1\n1 4 1\n")
  dataset = data.load_dataset(paper_config(tmp_path, "1 1 1\n2 2 1\n", "1 4 1\n2 3 -1\n",
                                           augment_file=augment))
  # 1-1 is already in train: dropped. 1-4 is a test pair: the test split never shapes training
  # data, so it stays, counted.
  assert pairs(dataset, "train") == {("1", "1", 1), ("2", "2", 1), ("1", "3", 1),
                                     ("2", "1", -1), ("1", "4", 1)}
  summary = dataset.summary
  assert summary["augmented_positives"] == 2 and summary["augmented_negatives"] == 1
  assert summary["augment_overlap_rows"] == 1 and summary["augment_unknown_rows"] == 0
  assert summary["augment_test_pair_rows"] == 1
  assert len(dataset.augmented) == 3
  assert len(dataset.observed_train()) == 2


def test_augmented_rows_are_not_masked_at_evaluation(tmp_path):
  """An augmented pair that is a test pair can be a hit; observed train items stay masked."""
  augment = write(tmp_path / "augment.txt", "1 4 1\n")
  dataset = data.load_dataset(paper_config(tmp_path, "1 1 1\n2 2 1\n2 4 1\n", "1 4 1\n",
                                           augment_file=augment))
  users, relevant, exclude = evaluation.split_targets(dataset, "test")
  user, item4, item1 = (int(np.flatnonzero(ids == raw)[0])
                        for ids, raw in ((dataset.user_ids, "1"), (dataset.item_ids, "4"),
                                         (dataset.item_ids, "1")))
  assert users.tolist() == [user] and relevant[0, item4]
  assert not exclude[user, item4] and exclude[user, item1]


def test_augment_unknown_id_is_an_error_or_a_counted_skip(tmp_path):
  augment = write(tmp_path / "augment.txt", "1 3 1\n7 1 1\n1 99 -1\n")
  config = paper_config(tmp_path, "1 1 1\n", "1 3 -1\n", augment_file=augment)
  with pytest.raises(ValueError, match=r"augment.txt, line 2: unknown user id '7'"):
    data.load_dataset(config)
  with pytest.raises(ValueError, match=r"augment.txt: 2 of 3 rows \(66.7%\) are malformed"):
    data.load_dataset(config.replace(skip_bad_rows=True))
  dataset = data.load_dataset(config.replace(skip_bad_rows=True, max_bad_fraction=0.7))
  assert dataset.summary["augment_unknown_rows"] == 2
  assert dataset.summary["skipped_rows"] == 2
  assert dataset.summary["augment_overlap_rows"] == 0  # 1-3 is a test pair: kept, counted.
  assert dataset.summary["augment_test_pair_rows"] == 1
  assert len(dataset.train) == 2


# --- Splits ----------------------------------------------------------------------------------


def ratings_text(num_users: int, seed: int, sep: str = "\t") -> tuple[str, np.ndarray]:
  """User u has u + 1 ratings (1..5) of distinct items; returns (u.data text, sizes)."""
  rng = np.random.default_rng(seed)
  lines, sizes = [], np.arange(1, num_users + 1)
  for user, size in enumerate(sizes, 1):
    for item in rng.choice(200, size, replace=False) + 1:
      lines.append(sep.join(map(str, (user, item, rng.integers(1, 6), 880000000))))
  rng.shuffle(lines)
  return "\n".join(lines) + "\n", sizes


def write_ml100k(folder, ratings: str) -> str:
  os.makedirs(folder, exist_ok=True)
  users = sorted({line.split()[0] for line in ratings.splitlines()}, key=int)
  items = sorted({line.split()[1] for line in ratings.splitlines()}, key=int)
  genre_flags = ["|".join("1" if g == int(i) % 19 else "0" for g in range(19)) for i in items]
  write(os.path.join(folder, "u.data"), ratings)
  write(os.path.join(folder, "u.item"), "".join(
      f"{i}|Movie {i} (19{int(i) % 100:02d})|01-Jan-1990||http://x|{flags}\n"
      for i, flags in zip(items, genre_flags)), "latin-1")
  write(os.path.join(folder, "u.user"), "".join(f"{u}|30|M|writer|0{u}\n" for u in users))
  write(os.path.join(folder, "u.genre"),
        "".join(f"{g}|{n}\n" for n, g in enumerate(movielens.ML100K_GENRES)) + "\n")
  return str(folder)


def ml100k_config(folder, **changes) -> Config:
  return Config(dataset="ml-100k", data_dir=str(folder), download=False, **changes)


def test_raw_split_is_ceil_fraction_per_user_and_deterministic(tmp_path):
  text, sizes = ratings_text(30, seed=1)
  folder = write_ml100k(tmp_path / "ml", text)
  first = data.load_dataset(ml100k_config(folder, valid_fraction=0.0, split_seed=3))
  again = data.load_dataset(ml100k_config(folder, valid_fraction=0.0, split_seed=3))
  other = data.load_dataset(ml100k_config(folder, valid_fraction=0.0, split_seed=4))
  per_user = np.bincount(first.test.users, minlength=first.num_users)
  assert per_user.tolist() == [math.ceil(round(0.2 * n, 6)) for n in sizes]
  assert pairs(first, "test") == pairs(again, "test")
  assert pairs(first, "train") == pairs(again, "train")
  assert pairs(first, "test") != pairs(other, "test")
  assert not pairs(first, "test") & pairs(first, "train")
  assert len(first.train) + len(first.test) == sizes.sum()
  assert len(first.valid) == 0


def test_ceil_of_fraction_is_not_fooled_by_float_error():
  assert 0.07 * 100 > 7 and 0.14 * 50 > 7  # float error would round these up to 8
  assert splits.ceil_fraction(0.07, np.array([100, 101])).tolist() == [7, 8]
  assert splits.ceil_fraction(0.14, np.array([50])).tolist() == [7]
  assert splits.ceil_fraction(0.2, np.array([1, 5, 35, 36])).tolist() == [1, 1, 7, 8]


def slow_valid_sizes(train_labels_by_user: dict, fraction: float) -> dict:
  """The validation rule written out per user."""
  return {u: min(math.ceil(round(fraction * len(labels), 6)), len(labels) - 1)
          for u, labels in train_labels_by_user.items()}


def test_validation_carving_rule(tmp_path):
  # User 1: one positive among 10 rows; user 2: a single positive; user 3: only dislikes;
  # user 4: 20 positives.
  train = (["1 1 1"] + [f"1 {i} -1" for i in range(2, 11)] + ["2 1 1"]
           + [f"3 {i} -1" for i in range(1, 6)] + [f"4 {i} 1" for i in range(1, 21)])
  config = paper_config(tmp_path, "\n".join(train) + "\n", "1 30 1\n", valid_fraction=0.9)
  for seed in range(5):
    dataset = data.load_dataset(config.replace(split_seed=seed))
    by_user = {}
    for line in train:
      user, _, label = line.split()
      by_user.setdefault(user, []).append(int(label))
    expected = slow_valid_sizes(by_user, 0.9)
    valid_sizes = {u: int((dataset.valid.users == k).sum())
                   for k, u in enumerate(dataset.user_ids)}
    assert valid_sizes == expected
    user_one = np.flatnonzero(dataset.user_ids == "1")[0]
    train_one = dataset.train.select(dataset.train.users == user_one)
    assert (train_one.labels > 0).sum() == 1  # the only positive stays in train
    assert dataset.summary["users_without_train_positives"] == 1  # user 3 never had one
    assert dataset.summary["train_rows_before_valid"] == len(train)
    assert len(dataset.train) + len(dataset.valid) == len(train)


def test_validation_is_deterministic_and_proportional(tmp_path):
  text, sizes = ratings_text(40, seed=2)
  folder = write_ml100k(tmp_path / "ml", text)
  first = data.load_dataset(ml100k_config(folder, split_seed=5))
  again = data.load_dataset(ml100k_config(folder, split_seed=5))
  assert pairs(first, "valid") == pairs(again, "valid")
  train_sizes = sizes - np.ceil(np.round(0.2 * sizes, 6)).astype(int)
  expected = np.minimum(np.ceil(np.round(0.1 * train_sizes, 6)), np.maximum(train_sizes - 1, 0))
  assert np.bincount(first.valid.users, minlength=first.num_users).tolist() == expected.tolist()


# --- Raw MovieLens readers, zips and downloads -----------------------------------------------


def test_ml100k_folder_reader_thresholds_and_metadata(tmp_path):
  folder = tmp_path / "ml"
  os.makedirs(folder)
  write(folder / "u.data", "1\t10\t4\t1\n1\t20\t3\t2\n2\t10\t5\t3\n2\t30\t1\t4\n2\t20\t2\t5\n")
  flags = lambda *on: "|".join("1" if g in on else "0" for g in range(19))
  write(folder / "u.item",
        f"10|Caf\xe9 (1994)|01-Jan-1994||http://a|{flags(1, 5)}\n"
        f"20|No Year|05-May-1971||http://b|{flags(8)}\n"
        f"30|unknown||||{flags(0)}\n", "latin-1")
  write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
  config = ml100k_config(folder, valid_fraction=0.0, test_fraction=0.0)
  dataset = data.load_dataset(config)
  assert pairs(dataset, "train") == {("1", "10", 1), ("1", "20", -1), ("2", "10", 1),
                                     ("2", "30", -1), ("2", "20", -1)}
  assert dataset.item_meta == [
      {"title": "Caf\xe9 (1994)", "year": 1994, "genres": ["Action", "Comedy"]},
      {"title": "No Year", "year": 1971, "genres": ["Drama"]},
      {"title": "unknown", "year": None, "genres": ["unknown"]}]
  assert dataset.user_meta[1] == {"gender": "F", "age": 53, "occupation": "other",
                                  "zip": "94043"}
  lower = data.load_dataset(config.replace(like_threshold=3))
  assert pairs(lower, "train") >= {("1", "20", 1)}


def test_ml100k_bad_rating_names_file_and_line(tmp_path):
  folder = tmp_path / "ml"
  os.makedirs(folder)
  write(folder / "u.data", "1\t10\t4\t1\n1\t20\tfive\t2\n")
  with pytest.raises(ValueError, match=r"u.data, line 2: non-numeric rating 'five'"):
    data.load_dataset(ml100k_config(folder))


def write_ml1m(folder) -> str:
  os.makedirs(folder, exist_ok=True)
  write(os.path.join(folder, "ratings.dat"),
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
        "2::661::2::978299000\n2::914::1::978299100\n")
  write(os.path.join(folder, "movies.dat"),
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "914::My Fair Lady (1964)::Musical|Romance\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n", "latin-1")
  write(os.path.join(folder, "users.dat"), "1::F::1::10::48067\n2::M::56::16::70072\n")
  return str(folder)


def test_ml1m_folder_reader(tmp_path):
  folder = write_ml1m(tmp_path / "ml")
  dataset = data.load_dataset(Config(dataset="ml-1m", data_dir=folder, download=False,
                                     valid_fraction=0.0, test_fraction=0.0))
  assert dataset.item_ids.tolist() == ["661", "914", "1193"]
  assert pairs(dataset, "train") == {("1", "1193", 1), ("1", "661", -1), ("2", "1193", 1),
                                     ("2", "661", -1), ("2", "914", -1)}
  assert dataset.item_meta[0] == {"title": "James and the Giant Peach (1996)", "year": 1996,
                                  "genres": ["Animation", "Children's", "Musical"]}
  assert dataset.user_meta == [
      {"gender": "F", "age": 1, "occupation": "K-12 student", "zip": "48067"},
      {"gender": "M", "age": 56, "occupation": "self-employed", "zip": "70072"}]


def test_movielens_timestamps_drive_the_time_splits(tmp_path):
  folder = write_ml1m(tmp_path / "ml")
  dataset = data.load_dataset(Config(dataset="ml-1m", data_dir=folder, download=False,
                                     valid_fraction=0.0, split="leave_last_out"))
  assert pairs(dataset, "test") == {("1", "661", -1), ("2", "914", -1)}
  assert dataset.summary["split"] == "leave_last_out"


def make_zip(folder, zip_path, top: str) -> bytes:
  with zipfile.ZipFile(zip_path, "w") as archive:
    archive.writestr(f"{top}/", "")
    for name in sorted(os.listdir(folder)):
      archive.write(os.path.join(folder, name), f"{top}/{name}")
  with open(zip_path, "rb") as f:
    return f.read()


def test_reads_the_original_zip_layout(tmp_path):
  folder = write_ml1m(tmp_path / "files")
  data_dir = tmp_path / "data"
  os.makedirs(data_dir)
  make_zip(folder, data_dir / "ml-1m.zip", "ml-1m")
  config = Config(dataset="ml-1m", data_dir=str(data_dir), download=False, valid_fraction=0.0)
  from_zip = data.load_dataset(config)
  from_folder = data.load_dataset(config.replace(data_dir=folder))
  assert pairs(from_zip, "train") == pairs(from_folder, "train")
  assert pairs(from_zip, "test") == pairs(from_folder, "test")
  assert from_zip.item_meta == from_folder.item_meta
  assert from_zip.user_meta == from_folder.user_meta


def test_zip_member_errors_name_the_member(tmp_path):
  folder = tmp_path / "files"
  os.makedirs(folder)
  write(folder / "u.data", "1\t1\t5\t0\n1\t2\n")
  make_zip(folder, tmp_path / "ml-100k.zip", "ml-100k")
  with pytest.raises(ValueError, match=r"ml-100k.zip:ml-100k/u.data, line 2"):
    data.load_dataset(ml100k_config(tmp_path))


def test_missing_files_offline_say_what_to_place_where(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")
  monkeypatch.setattr(movielens.urllib.request, "urlopen", offline)
  data_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset(Config(dataset="ml-100k", data_dir=data_dir, download=True))
  message = str(error.value)
  assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message
  assert os.path.join(data_dir, "ml-100k.zip") in message
  assert "no network" in message
  assert [n for n in os.listdir(data_dir) if n.endswith(".part")] == []
  with pytest.raises(FileNotFoundError, match=r"Downloading is off \(--download\)"):
    data.load_dataset(Config(dataset="ml-1m", data_dir=data_dir, download=False))


class FakeResponse(io.BytesIO):
  """What urlopen returns: a readable context manager."""


def fake_archive(payload: bytes, sha256: str = "") -> movielens.Archive:
  return movielens.Archive(
      file_name="ml-100k.zip", url="https://example.invalid/ml-100k.zip",
      sha256=sha256 or hashlib.sha256(payload).hexdigest(), md5=hashlib.md5(payload).hexdigest(),
      top_folder="ml-100k", ratings_file="u.data", movies_file="u.item", users_file="u.user")


def test_download_verifies_checksum_and_extracts(tmp_path):
  text, _ = ratings_text(5, seed=0)
  folder = write_ml100k(tmp_path / "files", text)
  payload = make_zip(folder, tmp_path / "built.zip", "ml-100k")
  fetch = lambda url, timeout: FakeResponse(payload)
  data_dir = str(tmp_path / "data")
  source = movielens.find_movielens("ml-100k", data_dir, True,
                               archives={"ml-100k": fake_archive(payload)}, urlopen=fetch)
  assert sorted(os.listdir(data_dir)) == ["ml-100k.zip", "u.data", "u.genre", "u.item",
                                          "u.user"]
  assert source.read("u.data")[0] == text.encode()
  corrupt = {"ml-100k": fake_archive(payload, sha256="0" * 64)}
  other_dir = str(tmp_path / "other")
  with pytest.raises(ValueError, match="Checksum mismatch"):
    movielens.find_movielens("ml-100k", other_dir, True, archives=corrupt, urlopen=fetch)
  assert os.listdir(other_dir) == []  # nothing half-written


def test_published_checksums_are_the_readme_values():
  assert movielens.ARCHIVES["ml-100k"].sha256.startswith("50d2a982c669")
  assert movielens.ARCHIVES["ml-1m"].sha256.startswith("a6898adb50b9")


# --- The real data ---------------------------------------------------------------------------


def test_real_ml100k(ml100k_dir):
  dataset = data.load_dataset(Config(dataset="ml-100k", data_dir=ml100k_dir, download=False))
  assert (dataset.num_users, dataset.num_items) == (943, 1682)
  summary = dataset.summary
  assert summary["train_rows"] + summary["valid_rows"] + summary["test_rows"] == 100_000
  sizes = np.bincount(np.concatenate([dataset.train.users, dataset.valid.users,
                                      dataset.test.users]))
  assert summary["test_rows"] == int(np.ceil(np.round(0.2 * sizes, 6)).sum())
  assert summary["duplicate_rows"] == 0 and summary["skipped_rows"] == 0
  assert all(meta.get("title") for meta in dataset.item_meta)
  assert dataset.item_meta[0]["genres"] == ["Animation", "Children's", "Comedy"]
  assert all(meta.get("gender") in ("M", "F") for meta in dataset.user_meta)
  print(data.format_summary(summary))


def test_real_ml1m_paper_split(ml1m):
  summary = ml1m.summary
  assert summary["train_rows_before_valid"] == 797_677
  assert summary["train_rows"] + summary["valid_rows"] == 797_677
  assert summary["test_rows"] == 202_451
  assert summary["users"] == 6040
  assert summary["skipped_rows"] == 0 and summary["duplicate_rows"] == 0
  assert summary["train_test_overlap"] == 0
  test = pairs(ml1m, "test")
  assert ("2814", "1272", 1) in test  # line 92528, separated by spaces
  assert ("2814", "12", -1) in test
  assert all(meta.get("genres") for meta in ml1m.item_meta)
  assert summary["users_with_metadata"] == 6040
  print(data.format_summary(summary))


def test_real_ml100k_zip_matches_folder(ml100k_dir, tmp_path):
  make_zip(ml100k_dir, tmp_path / "ml-100k.zip", "ml-100k")
  config = Config(dataset="ml-100k", download=False)
  from_zip = data.load_dataset(config.replace(data_dir=str(tmp_path)))
  from_folder = data.load_dataset(config.replace(data_dir=ml100k_dir))
  for split in ("train", "valid", "test"):
    np.testing.assert_array_equal(getattr(from_zip, split).items,
                                  getattr(from_folder, split).items)
  assert from_zip.item_meta == from_folder.item_meta
