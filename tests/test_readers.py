"""Tests for the readers (`--dataset=ratings | adjacency | recbole`), the time splits, given
files, bad input and cold users, on small inline files and the CC0 X-Wines test files."""

import math
import os

import numpy as np
import pytest

from lagcl_jax import config as config_lib
from lagcl_jax import data
from lagcl_jax import evaluation
from lagcl_jax import readers
from lagcl_jax.config import Config
from lagcl_jax.llm import profiles
from lagcl_jax.parsing import BadRows



def write(path, text: str, encoding: str = "utf-8") -> str:
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)
  return str(path)


def pairs(dataset, split: str) -> set[tuple[str, str, int]]:
  rows = getattr(dataset, split)
  return {(dataset.user_ids[u], dataset.item_ids[i], int(y))
          for u, i, y in zip(rows.users, rows.items, rows.labels)}


def ratings_config(tmp_path, text: str, **changes) -> Config:
  """--dataset=ratings over one file, everything in train unless changed."""
  return Config(dataset="ratings", train_file=write(tmp_path / "ratings.csv", text),
                test_file=write(tmp_path / "empty_test.csv", text.splitlines(True)[0]),
                valid_fraction=0.0).replace(**changes)


# --- Delimited rating files ------------------------------------------------------------------


def test_csv_with_header_columns_by_name_and_float_threshold(tmp_path):
  text = ("RatingID,UserID,WineID,Rating,Date\r\n"
          "1,u1,w1,4.5,2020-01-01 10:00:00\r\n"
          "2,u1,w2,3.5,2020-01-02 10:00:00\r\n"
          "3,u2,w1,4.0,2020-01-03\r\n")
  config = Config(dataset="ratings", train_file=write(tmp_path / "r.csv", text),
                  user_col="UserID", item_col="WineID", rating_col="Rating", time_col="Date",
                  like_threshold=4.0, valid_fraction=0.0, test_fraction=0.0)
  dataset = data.load_dataset(config)
  assert pairs(dataset, "train") == {("u1", "w1", 1), ("u1", "w2", -1), ("u2", "w1", 1)}
  higher = data.load_dataset(config.replace(like_threshold=4.25))
  assert pairs(higher, "train") == {("u1", "w1", 1), ("u1", "w2", -1), ("u2", "w1", -1)}


def test_tab_file_with_positions_sniffs_the_header(tmp_path):
  # HetRec Last.fm layout: a header, tabs, CRLF, implicit play counts.
  text = "userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t1\r\n"
  dataset = data.load_dataset(Config(
      dataset="ratings", train_file=write(tmp_path / "user_artists.dat", text), implicit=True,
      valid_fraction=0.0, test_fraction=0.0))
  assert pairs(dataset, "train") == {("2", "51", 1), ("2", "52", 1), ("3", "51", 1)}


@pytest.mark.parametrize("text, delimiter", [
    ("1 10 5\n1   11\t1\n", ""),
    ("1;10;5\n1;11;1\n", ""),
    ("1::10::5\n1::11::1\n", ""),
    ("1|10|5\n1|11|1\n", "pipe"),
    ("1\t10\t5\n1\t11\t1\n", "tab"),
])
def test_delimiters_sniffed_or_given(tmp_path, text, delimiter):
  dataset = data.load_dataset(Config(
      dataset="ratings", train_file=write(tmp_path / "r.txt", text), delimiter=delimiter,
      header="no", valid_fraction=0.0, test_fraction=0.0))
  assert pairs(dataset, "train") == {("1", "10", 1), ("1", "11", -1)}


def test_quoted_csv_fields_and_item_table(tmp_path):
  ratings = write(tmp_path / "r.csv", "user,item,stars\n1,a,5\n2,b,2\n")
  items = write(tmp_path / "items.csv",
                'id,WineName,Type,Grapes\n'
                'a,"Origem, Merlot",Red,"[\'Merlot\', \'Syrah\']"\n'
                'b,Reserva Chardonnay,White,[\'Chardonnay\']\n'
                'z,Not rated,Rosé,[]\n')
  dataset = data.load_dataset(Config(
      dataset="ratings", train_file=ratings, item_file=items, item_genre_col="Grapes",
      user_col="user", item_col="item", rating_col="stars", valid_fraction=0.0,
      test_fraction=0.0))
  assert dataset.item_meta[0] == {"WineName": "Origem, Merlot", "Type": "Red",
                                  "Grapes": "['Merlot', 'Syrah']", "title": "Origem, Merlot",
                                  "genres": ["Merlot", "Syrah"]}
  assert dataset.item_meta[1]["title"] == "Reserva Chardonnay"
  assert dataset.num_items == 2  # a table row with no interaction adds no item
  assert dataset.summary["items_with_metadata"] == 2


def test_item_table_id_column_is_checked(tmp_path):
  ratings = write(tmp_path / "r.csv", "1,a,5\n2,b,2\n")
  items = write(tmp_path / "items.csv", "id,name\na,A\n")
  config = Config(dataset="ratings", train_file=ratings, item_file=items, item_id_col="WineID",
                  valid_fraction=0.0, test_fraction=0.0)
  with pytest.raises(ValueError, match=r"--item_id_col='WineID': .*items.csv has no such column"):
    data.load_dataset(config)
  with pytest.raises(ValueError, match=r"items.csv: no data rows"):
    data.load_dataset(config.replace(item_file=write(tmp_path / "items.csv", "")))


def test_parse_list_spellings():
  assert readers.parse_list("['Beef', 'Lamb']") == ["Beef", "Lamb"]
  assert readers.parse_list("Action|Comedy") == ["Action", "Comedy"]
  assert readers.parse_list("Red") == ["Red"]
  assert readers.parse_list("") == []


# --- Bad input: each message names the file and line, or the flag ----------------------------


@pytest.mark.parametrize("text, changes, message", [
    ("u,i,r\n1,2,3\n", {"user_col": "user"},
     r"--user_col='user': .*r.csv has no such column; its columns are \['u', 'i', 'r'\]"),
    ("1,2,3\n1,3,4\n", {"rating_col": "7"}, r"--rating_col=7: .*r.csv has only 3 columns"),
    ("1,2,3\n1,3,4\n", {"header": "no", "time_col": "Date"},
     r"--time_col='Date' names a column, but .*r.csv has no header"),
    ("u,i,r\n1,2,3\n1,3,five\n", {}, r"r.csv, line 3: non-numeric rating 'five'"),
    ("u,i,r\n1,2,3\n1,3\n", {}, r"r.csv, line 3: expected 3 fields, found 2"),
    ("u,i,r,t\n1,2,3,2020-01-01\n1,3,4,yesterday\n", {"time_col": "t"},
     r"r.csv, line 3: time 'yesterday' is neither a number nor an ISO date"),
    ("u,i,r\n1,,3\n", {}, r"r.csv, line 2: empty user or item id"),
    ("", {}, r"r.csv: no data rows \(an empty file"),
    ("\n\n", {}, r"r.csv: no data rows \(an empty file"),
    ("u,i,r\n", {"user_col": "u"}, r"r.csv: no data rows \(an empty file, or a header only\)"),
])
def test_ratings_bad_input_messages(tmp_path, text, changes, message):
  config = Config(dataset="ratings", train_file=write(tmp_path / "r.csv", text),
                  valid_fraction=0.0, test_fraction=0.0).replace(**changes)
  with pytest.raises(ValueError, match=message):
    data.load_dataset(config)


def test_bad_encoding_names_line_and_flag(tmp_path):
  path = tmp_path / "r.csv"
  path.write_bytes("u,i,r\n1,2,3\n1,caf\xe9,4\n".encode("latin-1"))
  config = Config(dataset="ratings", train_file=str(path), valid_fraction=0.0,
                  test_fraction=0.0)
  with pytest.raises(ValueError, match=r"r.csv, line 3: not valid utf-8 text \(set --encoding"):
    data.load_dataset(config)
  dataset = data.load_dataset(config.replace(encoding="latin-1"))
  assert "caf\xe9" in dataset.item_ids.tolist()


def test_empty_given_test_file_is_a_one_line_error(tmp_path):
  config = Config(dataset="lagcl", train_file=write(tmp_path / "train.txt", "1 1 1\n"),
                  test_file=write(tmp_path / "test.txt", ""))
  with pytest.raises(ValueError, match=r"test.txt: no data rows \(an empty file, or a header "
                                       r"only\)\.$"):
    data.load_dataset(config)


def test_skip_bad_rows_stops_above_max_bad_fraction(tmp_path):
  # The case: a rating file read as the paper's format keeps only its "1.00" rows.
  lines = [f"{u} {i} {r:.2f}" for u in range(1, 11) for i, r in enumerate((1, 2, 3, 4, 5))]
  train = write(tmp_path / "train.txt", "\n".join(lines) + "\n")
  config = Config(dataset="lagcl", train_file=train,
                  test_file=write(tmp_path / "test.txt", "1 9 1\n"), skip_bad_rows=True)
  with pytest.raises(ValueError) as error:
    data.load_dataset(config)
  message = str(error.value)
  assert "train.txt: 40 of 50 rows (80.0%) are malformed" in message
  assert "--max_bad_fraction=0.01" in message
  assert "train.txt, line 2: label '2.00' is not 1 or -1" in message
  assert "--dataset=ratings --like_threshold" in message
  # Below the threshold, skipping works and is counted.
  few = write(tmp_path / "few.txt", "".join(f"{u} 1 1\n" for u in range(200)) + "7 2 2\n")
  dataset = data.load_dataset(config.replace(train_file=few))
  assert dataset.summary["skipped_rows"] == 1 and len(dataset.train) == 200


def test_paper_format_accepts_float_spellings_only_for_the_whole_file(tmp_path):
  config = Config(dataset="lagcl", train_file=write(tmp_path / "train.txt", "1 1 1.0\n1 2 -1.0\n"),
                  test_file=write(tmp_path / "test.txt", "1 3 1\n"), valid_fraction=0.0)
  dataset = data.load_dataset(config)
  assert pairs(dataset, "train") == {("1", "1", 1), ("1", "2", -1)}


def test_config_checks_name_the_flag():
  with pytest.raises(ValueError, match="--dataset='netflix'"):
    config_lib.validate(Config(dataset="netflix"))
  with pytest.raises(ValueError, match="--split='by_time'"):
    config_lib.validate(Config(split="by_time"))
  with pytest.raises(ValueError, match=r"--split='leave_last_out'.*set --time_col"):
    config_lib.validate(Config(dataset="ratings", train_file="r.csv", split="leave_last_out"))
  with pytest.raises(ValueError, match=r"--split='global_time'.*--dataset=adjacency has none"):
    config_lib.validate(Config(dataset="adjacency", train_file="t.txt", split="global_time"))
  with pytest.raises(ValueError, match="--train_file=''"):
    config_lib.validate(Config(dataset="ratings"))
  with pytest.raises(ValueError, match=r"--train_file='r.csv'.*use --dataset=ratings"):
    config_lib.validate(Config(dataset="ml-100k", train_file="r.csv"))
  with pytest.raises(ValueError, match="--implicit=True"):
    config_lib.validate(Config(dataset="lagcl", train_file="t", implicit=True))
  with pytest.raises(ValueError, match="--max_bad_fraction=2"):
    config_lib.validate(Config(max_bad_fraction=2))
  with pytest.raises(ValueError, match="--header='maybe'"):
    config_lib.validate(Config(header="maybe"))
  config_lib.validate(Config(dataset="ratings", train_file="r.csv", time_col="Date",
                             split="temporal_fraction"))
  config_lib.validate(Config(dataset="ml-1m", split="leave_last_out"))


def test_time_split_without_times_names_the_file(tmp_path):
  config = Config(dataset="ratings", train_file=write(tmp_path / "r.csv", "1,2,3\n1,3,4\n"),
                  split="leave_last_out")
  with pytest.raises(ValueError, match=r"--split=leave_last_out .*r.csv has no time column"):
    data.load_dataset(config)


# --- Splits ----------------------------------------------------------------------------------


def timed_ratings(tmp_path, num_users: int = 12, seed: int = 0) -> tuple[str, list]:
  """User u rates u + 1 items at shuffled distinct times (a few ties); returns (path, rows)."""
  rng = np.random.default_rng(seed)
  rows = []
  for user in range(num_users):
    times = rng.permutation(50)[:user + 1] * 100
    if user == 5:
      times[:] = 7  # all tied: later lines count as later
    for item, time in zip(rng.choice(40, user + 1, replace=False), times):
      rows.append((f"u{user}", f"i{item}", float(rng.integers(1, 6)), int(time)))
  text = "user,item,rating,time\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
  return write(tmp_path / "timed.csv", text), rows


def slow_latest(rows: list, count_of) -> set:
  """The rows a per-user time rule holds out, written out per user."""
  held = set()
  users = sorted({r[0] for r in rows})
  for user in users:
    mine = [(t, line, r) for line, r in enumerate(rows) for t in [r[3]] if r[0] == user]
    mine.sort()
    count = min(count_of(len(mine)), len(mine) - 1)
    held |= {(r[0], r[1]) for _, _, r in mine[len(mine) - count:]} if count else set()
  return held


def split_pairs(dataset, split):
  return {(u, i) for u, i, _ in pairs(dataset, split)}


def test_leave_last_out_and_temporal_fraction_take_each_users_latest(tmp_path):
  path, rows = timed_ratings(tmp_path)
  base = Config(dataset="ratings", train_file=path, user_col="user", item_col="item",
                rating_col="rating", time_col="time", valid_fraction=0.0)
  last = data.load_dataset(base.replace(split="leave_last_out"))
  assert split_pairs(last, "test") == slow_latest(rows, lambda n: 1)
  assert last.summary["split"] == "leave_last_out"
  fraction = data.load_dataset(base.replace(split="temporal_fraction", test_fraction=0.3))
  expected = slow_latest(rows, lambda n: math.ceil(round(0.3 * n, 6)))
  assert split_pairs(fraction, "test") == expected
  # Time rules draw no random numbers: the seed changes nothing.
  again = data.load_dataset(base.replace(split="temporal_fraction", test_fraction=0.3,
                                         split_seed=9))
  assert pairs(again, "test") == pairs(fraction, "test")
  # Validation is carved by the same rule from what is left, before the test rows.
  with_valid = data.load_dataset(base.replace(split="leave_last_out", valid_fraction=0.1))
  train_rows = [r for r in rows if (r[0], r[1]) not in split_pairs(with_valid, "test")]
  assert split_pairs(with_valid, "valid") == slow_latest(train_rows, lambda n: 1)
  time_of = {(r[0], r[1]): r[3] for r in rows}
  for user in {r[0] for r in rows}:
    train_times = [time_of[p] for p in split_pairs(with_valid, "train") if p[0] == user]
    later = [time_of[p] for p in split_pairs(with_valid, "valid") | split_pairs(with_valid, "test")
             if p[0] == user]
    assert not later or max(train_times) <= min(later)


def test_global_time_cut(tmp_path):
  path, rows = timed_ratings(tmp_path, seed=1)
  dataset = data.load_dataset(Config(
      dataset="ratings", train_file=path, user_col="user", item_col="item", rating_col="rating",
      time_col="time", split="global_time", test_fraction=0.25, valid_fraction=0.0))
  count = math.ceil(round(0.25 * len(rows), 6))
  ordered = sorted(range(len(rows)), key=lambda k: (rows[k][3], k))
  assert split_pairs(dataset, "test") == {rows[k][:2] for k in ordered[-count:]}
  assert dataset.summary["test_time_cut"] == rows[ordered[-count]][3]


def test_random_split_is_seeded(tmp_path):
  path, _ = timed_ratings(tmp_path)
  base = Config(dataset="ratings", train_file=path, user_col="user", item_col="item",
                rating_col="rating")
  first, again = data.load_dataset(base), data.load_dataset(base)
  other = data.load_dataset(base.replace(split_seed=1))
  assert pairs(first, "test") == pairs(again, "test") != pairs(other, "test")
  assert pairs(first, "valid") == pairs(again, "valid")


# --- Given files, adjacency lists, RecBole ---------------------------------------------------


def test_adjacency_with_given_validation_and_items_only_in_test(tmp_path):
  train = write(tmp_path / "train.txt", "0 1 2 3\n1 2\n2\n")
  valid = write(tmp_path / "valid.txt", "0 4\n1 3\n")
  test = write(tmp_path / "test.txt", "0 5 1\n1 6\n2 2\n")
  dataset = data.load_dataset(Config(dataset="adjacency", train_file=train, valid_file=valid,
                                     test_file=test))
  assert dataset.item_ids.tolist() == ["1", "2", "3", "4", "5", "6"]
  assert split_pairs(dataset, "train") == {("0", "1"), ("0", "2"), ("0", "3"), ("1", "2")}
  assert split_pairs(dataset, "valid") == {("0", "4"), ("1", "3")}  # used as given
  assert split_pairs(dataset, "test") == {("0", "5"), ("1", "6"), ("2", "2")}
  assert dataset.summary["train_test_overlap"] == 1  # 0-1
  assert dataset.summary["split"] == "given files"
  assert dataset.summary["cold_test_users"] == 1  # user 2 has no train item
  assert dataset.summary["items_without_train_rows"] == 3


def test_given_valid_file_drops_train_pairs_and_test_pairs(tmp_path):
  dataset = data.load_dataset(Config(
      dataset="lagcl", train_file=write(tmp_path / "t.txt", "1 1 1\n1 2 1\n"),
      valid_file=write(tmp_path / "v.txt", "1 2 1\n1 3 1\n"),
      test_file=write(tmp_path / "e.txt", "1 3 1\n1 4 -1\n")))
  assert split_pairs(dataset, "valid") == {("1", "3")}
  assert split_pairs(dataset, "test") == {("1", "4")}
  assert dataset.summary["valid_train_overlap"] == 1
  assert dataset.summary["test_valid_overlap"] == 1


def test_recbole_atomic_files(tmp_path):
  folder = tmp_path / "ml"
  os.makedirs(folder)
  write(folder / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                             "1\t10\t4.5\t100\n1\t20\t2\t200\n2\t10\t5\t300\n2\t20\t4\t400\n")
  write(folder / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                            "genre:token_seq\n10\tToy Story\t1995\tAnimation Comedy\n"
                            "20\tHeat\t1995\tAction\n")
  write(folder / "ml.user", "user_id:token\tage:token\tgender:token\n1\t24\tM\n2\t53\tF\n")
  config = Config(dataset="recbole", train_file=str(folder / "ml.inter"), valid_fraction=0.0,
                  split="leave_last_out")
  dataset = data.load_dataset(config)
  assert split_pairs(dataset, "test") == {("1", "20"), ("2", "20")}
  assert pairs(dataset, "train") == {("1", "10", 1), ("2", "10", 1)}
  assert dataset.item_meta[0]["title"] == "Toy Story"
  assert dataset.item_meta[0]["genres"] == ["Animation", "Comedy"]
  assert dataset.item_meta[1]["release_year"] == "1995" and dataset.item_meta[1]["year"] == 1995
  assert dataset.user_meta[1] == {"age": "53", "gender": "F"}
  # The .item text reaches the LLM profiles.
  item_text = profiles.template_profiles(dataset, max_titles=5, noun="movie").item_text
  assert item_text == ["Toy Story (1995); genre: Animation, Comedy", "Heat (1995); genre: Action"]
  implicit = data.load_dataset(config.replace(implicit=True))
  assert (implicit.test.labels == 1).all() and (implicit.train.labels == 1).all()


def test_recbole_without_typed_header_is_named(tmp_path):
  inter = write(tmp_path / "x.inter", "user_id\titem_id\n1\t2\n")
  with pytest.raises(ValueError, match=r"x.inter, line 1: expected a RecBole header"):
    data.load_dataset(Config(dataset="recbole", train_file=inter))


# --- X-Wines (the authors' tiny test files, from ../shared/data) end to end -----------------------------------------------------


def xwines_config(folder: str, **changes) -> Config:
  return Config(
      dataset="ratings", train_file=os.path.join(folder, "XWines_Test_1K_ratings.csv"),
      user_col="UserID", item_col="WineID", rating_col="Rating", time_col="Date",
      like_threshold=4.0, split="temporal_fraction",
      item_file=os.path.join(folder, "XWines_Test_100_wines.csv"), item_id_col="WineID",
      item_genre_col="Type").replace(**changes)


def test_xwines_test_files_end_to_end(xwines_dir):
  config = xwines_config(xwines_dir)
  config_lib.validate(config)
  dataset = data.load_dataset(config)
  summary = dataset.summary
  assert (summary["users"], summary["items"]) == (636, 100)
  assert summary["train_rows"] + summary["valid_rows"] + summary["test_rows"] == 1000
  assert summary["skipped_rows"] == 0 and summary["items_with_metadata"] == 100
  with open(os.path.join(xwines_dir, "XWines_Test_1K_ratings.csv"), encoding="utf-8") as f:
    ratings = [line.strip().split(",") for line in f.readlines()[1:]]
  liked = sum(float(r[4]) >= 4.0 for r in ratings)
  assert summary["train_positives"] + summary["valid_positives"] + summary["test_positives"] \
      == liked
  first = dataset.item_meta[0]
  assert first["title"] == first["WineName"] and first["genres"] == [first["Type"]]
  assert {"Grapes", "Harmonize", "RegionName", "Country"} <= set(first)
  assert "item_metadata_fields" in summary and "title" in summary["item_metadata_fields"]
  print(data.format_summary(summary))


# --- Cold users ------------------------------------------------------------------------------


def test_cold_test_users_are_marked_and_evaluated_apart(tmp_path):
  # User 3 has only a dislike in train, user 4 no train row at all: both are cold.
  dataset = data.load_dataset(Config(
      dataset="lagcl", valid_fraction=0.0,
      train_file=write(tmp_path / "t.txt", "1 1 1\n1 2 1\n2 2 1\n3 1 -1\n"),
      test_file=write(tmp_path / "e.txt", "1 3 1\n2 3 1\n3 3 1\n4 2 1\n")))
  assert dataset.summary["cold_test_users"] == 2
  assert dataset.has_train_positive().tolist() == [True, True, False, False]
  warm_users, _, _ = evaluation.split_targets(dataset, "test")
  cold_users, _, _ = evaluation.split_targets(dataset, "test", cold=True)
  assert warm_users.tolist() == [0, 1] and cold_users.tolist() == [2, 3]
  rng = np.random.default_rng(0)
  user_emb, item_emb = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
  assert evaluation.evaluate(user_emb, item_emb, dataset, "test", (2,))["num_users"] == 2
  cold = evaluation.evaluate(user_emb, item_emb, dataset, "test", (2,), cold=True)
  assert cold["num_users"] == 2


# --- The real data in ../shared/data ---------------------------------------------------------


def shared(*parts: str) -> str:
  path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", *parts)
  if not os.path.exists(path):
    pytest.skip(f"real data not found at {path}")
  return path


def test_real_lastfm_lgcnpp_adjacency_split():
  dataset = data.load_dataset(Config(
      dataset="adjacency", train_file=shared("lastfm-lgcnpp", "train.txt"),
      valid_file=shared("lastfm-lgcnpp", "valid.txt"),
      test_file=shared("lastfm-lgcnpp", "test.txt")))
  summary = dataset.summary
  assert (summary["users"], summary["items"]) == (1885, 17388)  # items only in valid/test too
  assert (summary["train_rows"], summary["valid_rows"], summary["test_rows"]) == (
      64_315, 9_143, 18_321)
  assert summary["cold_test_rows"] == 2_543  # test items never seen in train (data README)


def test_real_hetrec_lastfm_implicit_with_artist_names():
  dataset = data.load_dataset(Config(
      dataset="ratings", train_file=shared("lastfm-hetrec2011", "user_artists.dat"),
      implicit=True, item_file=shared("lastfm-hetrec2011", "artists.dat"), item_id_col="id"))
  summary = dataset.summary
  assert (summary["users"], summary["items"]) == (1892, 17632)
  assert summary["train_rows"] + summary["valid_rows"] + summary["test_rows"] == 92_834
  assert summary["train_negatives"] == 0 and summary["skipped_rows"] == 0
  assert dataset.item_meta[0]["title"] == "MALICE MIZER"
  assert summary["items_with_metadata"] == 17632
