"""Reading, checking and splitting interaction data: the paper's files and raw MovieLens.

Three inputs are read:
  * the paper's format (`dataset=lagcl`): `user item label` per line, whitespace-separated,
    label 1 (liked) or -1 (disliked), as `--train_file` / `--test_file`, with optional
    MovieLens metadata from `--metadata_dir`;
  * MovieLens-100K (`u.data`, `u.item`, `u.user`, `u.genre`) and
  * MovieLens-1M (`ratings.dat`, `movies.dat`, `users.dat`), each from a folder or from the
    original GroupLens zip, downloaded and checksum-verified when missing.

Rules (all counted in `Dataset.summary`):
  * Raw ids stay strings, exactly as written. Internal indices number every user and item that
    appears in train or test, in numeric order when all ids are numeric, else lexicographic.
  * A malformed row (wrong field count, non-numeric or unknown label/rating) raises ValueError
    naming the file and 1-based line; with `skip_bad_rows` it is skipped and counted instead.
  * A user-item pair repeated within one file keeps its last row.
  * A pair present in both train and test is dropped from test (its item is masked as a train
    item during full ranking, so it could only ever be a guaranteed miss).
  * Raw MovieLens: rating >= `like_threshold` is +1, else -1; nothing is dropped. Test holds
    ceil(test_fraction * n) of each user's n ratings, drawn with
    `np.random.default_rng(split_seed)`.
  * Validation (all datasets), carved from train with `np.random.default_rng([split_seed, 1])`:
    ceil(valid_fraction * n) of each user's n train rows, at most n - 1 (a user keeps at least
    one train row), and one randomly chosen train positive of each user who has any always
    stays in train.
  * `augment_file` rows (paper format, raw ids) are added to train after validation is carved.
    An unknown raw id is an error (counted skip under `skip_bad_rows`); a pair that is already
    in train, valid or test is dropped and counted, so augmentation never changes the
    evaluation sets or leaks them into train.
  Every fraction * n is rounded to 6 decimals before the ceiling, so 0.1 * 30 gives 3, not 4.
"""

import dataclasses
import hashlib
import os
import re
import urllib.error
import urllib.request
import zipfile
from typing import Any, Callable, Optional

from absl import logging
import numpy as np

from lagcl_jax import files
from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset, Interactions


@dataclasses.dataclass(frozen=True)
class Archive:
  """A GroupLens MovieLens zip: where to get it, how to check it, what it must contain."""
  file_name: str
  url: str
  sha256: str
  md5: str
  top_folder: str
  ratings_file: str
  movies_file: str
  users_file: str


ARCHIVES = {
    "ml-100k": Archive(
        file_name="ml-100k.zip",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        top_folder="ml-100k",
        ratings_file="u.data",
        movies_file="u.item",
        users_file="u.user"),
    "ml-1m": Archive(
        file_name="ml-1m.zip",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        top_folder="ml-1m",
        ratings_file="ratings.dat",
        movies_file="movies.dat",
        users_file="users.dat"),
}

# The 19 genres of MovieLens-100K's u.item flags, used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western")

# MovieLens-1M users.dat occupation codes (from the ML-1M README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")

_MAX_EXAMPLES = 5
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


class BadRows:
  """Fails on the first malformed row, or (skip mode) counts and remembers a few of them."""

  def __init__(self, skip: bool):
    self.skip = skip
    self.count = 0
    self.examples: list[str] = []

  def report(self, file_name: str, line: int, reason: str) -> None:
    message = f"{file_name}, line {line}: {reason}"
    if not self.skip:
      raise ValueError(message + " (pass --skip_bad_rows to skip and count such rows)")
    self.count += 1
    if len(self.examples) < _MAX_EXAMPLES:
      self.examples.append(message)


@dataclasses.dataclass
class RawRows:
  """Rows of one file with raw string ids. `lines` are 1-based line numbers."""
  file_name: str
  users: np.ndarray
  items: np.ndarray
  labels: np.ndarray
  lines: np.ndarray

  def select(self, mask: np.ndarray) -> "RawRows":
    return RawRows(self.file_name, self.users[mask], self.items[mask], self.labels[mask],
                   self.lines[mask])


# --------------------------------------------------------------------------------------------
# Low-level parsing.


def _decode(data: bytes, file_name: str, encoding: str) -> str:
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{file_name}, line {line}: not valid {encoding} text") from e


_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def _split_whitespace(data: bytes, file_name: str, encoding: str, num_fields: int,
                      bad_rows: BadRows) -> tuple[list[np.ndarray], np.ndarray]:
  """`split_rows` for fields separated by runs of ASCII whitespace, vectorised."""
  _decode(data, file_name, encoding)  # Fails early, with a line number, on bad encoding.
  chars = np.frombuffer(data, np.uint8)
  space = _WHITESPACE[chars]
  token_starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
  newlines = np.flatnonzero(chars == ord("\n"))
  token_lines = np.searchsorted(newlines, token_starts)  # 0-based line of each token
  counts = np.bincount(token_lines, minlength=newlines.size + 1)
  good = counts == num_fields
  for index in np.flatnonzero(~good & (counts > 0)):
    start = newlines[index - 1] + 1 if index else 0
    end = newlines[index] if index < newlines.size else len(data)
    text = data[start:end].decode(encoding).strip()
    bad_rows.report(file_name, int(index) + 1,
                    f"expected {num_fields} fields, found {counts[index]}: {text[:80]!r}")
  tokens = np.array(data.split(), dtype=bytes)
  if not good[token_lines].all():
    tokens = tokens[good[token_lines]]
  tokens = tokens.reshape(-1, num_fields)
  try:
    tokens = tokens.astype(str)
  except UnicodeDecodeError:
    tokens = np.char.decode(tokens, encoding)
  line_numbers = (np.flatnonzero(good) + 1).astype(np.int64)
  return [tokens[:, j] for j in range(num_fields)], line_numbers


def split_rows(data: bytes, file_name: str, encoding: str, sep: Optional[str],
               num_fields: int, bad_rows: BadRows) -> tuple[list[np.ndarray], np.ndarray]:
  """Splits a file into columns of rows with exactly `num_fields` fields; skips blank lines.

  Args:
    data: the whole file.
    file_name: for error messages.
    encoding: the file's text encoding.
    sep: field separator; None splits on runs of whitespace (tabs or spaces).
    num_fields: the required number of fields per row.
    bad_rows: where rows with another number of fields go.

  Returns:
    (columns, lines): `num_fields` string arrays and the 1-based line number of each row.
  """
  if sep is None:
    return _split_whitespace(data, file_name, encoding, num_fields, bad_rows)
  lines = _decode(data, file_name, encoding).split("\n")
  fields = [line.strip().split(sep) for line in lines]
  rows = []
  for index, (line, row) in enumerate(zip(lines, fields)):
    if len(row) == num_fields:
      rows.append(index)
    elif line.strip():
      bad_rows.report(file_name, index + 1,
                      f"expected {num_fields} fields, found {len(row)}: {line.strip()[:80]!r}")
  line_numbers = np.array(rows, np.int64) + 1
  if not rows:
    return [np.zeros(0, str) for _ in range(num_fields)], line_numbers
  return [np.array(column) for column in zip(*(fields[i] for i in rows))], line_numbers


def _to_float(token: str) -> float:
  try:
    return float(token)
  except ValueError:
    return float("nan")


def _parse_numbers(column: np.ndarray, lines: np.ndarray, file_name: str, what: str,
                   bad_rows: BadRows) -> tuple[np.ndarray, np.ndarray]:
  """Parses a string column as float; returns (values, mask of rows that parsed)."""
  try:
    values = column.astype(np.float64)
  except ValueError:
    values = np.array([_to_float(token) for token in column.tolist()])
  ok = np.isfinite(values)
  for index in np.flatnonzero(~ok):
    bad_rows.report(file_name, int(lines[index]), f"non-numeric {what} {str(column[index])!r}")
  return values, ok


def _parse_labels(column: np.ndarray, lines: np.ndarray, file_name: str,
                  bad_rows: BadRows) -> tuple[np.ndarray, np.ndarray]:
  """Parses a label column (1 or -1); returns (int8 labels, mask of valid rows)."""
  liked, disliked = column == "1", column == "-1"
  ok = liked | disliked
  if not ok.all():
    values, numeric = _parse_numbers(column, lines, file_name, "label", bad_rows)
    liked |= numeric & (values == 1)
    disliked |= numeric & (values == -1)
    for index in np.flatnonzero(numeric & ~(liked | disliked)):
      bad_rows.report(file_name, int(lines[index]),
                      f"unknown label {str(column[index])!r} (expected 1 or -1)")
    ok = liked | disliked
  return np.where(liked, 1, -1).astype(np.int8), ok


def read_paper_file(data: bytes, file_name: str, bad_rows: BadRows) -> RawRows:
  """Reads the paper's `user item label` format (whitespace-separated, label 1 or -1)."""
  data = data.removeprefix(b"\xef\xbb\xbf")  # A UTF-8 byte order mark is not part of an id.
  (users, items, labels), lines = split_rows(data, file_name, "utf-8", None, 3, bad_rows)
  labels, ok = _parse_labels(labels, lines, file_name, bad_rows)
  return RawRows(file_name, users, items, labels, lines).select(ok)


def read_ratings(data: bytes, file_name: str, like_threshold: float,
                 bad_rows: BadRows) -> RawRows:
  """Reads MovieLens `user item rating timestamp` rows (`::` or whitespace separated).

  Rating >= like_threshold becomes +1, anything lower -1.
  """
  data = data.replace(b"::", b"\t")  # No ML field contains whitespace.
  (users, items, ratings, _), lines = split_rows(data, file_name, "latin-1", None, 4,
                                                 bad_rows)
  values, ok = _parse_numbers(ratings, lines, file_name, "rating", bad_rows)
  labels = np.where(values >= like_threshold, 1, -1).astype(np.int8)
  return RawRows(file_name, users, items, labels, lines).select(ok)


def _year(text: str, pattern: re.Pattern) -> Optional[int]:
  match = pattern.search(text)
  return int(match.group(1)) if match else None


def _int_or_text(token: str) -> Any:
  return int(token) if token.isdigit() else token


def read_movies_dat(data: bytes, file_name: str, bad_rows: BadRows) -> dict[str, dict]:
  """MovieLens-1M `id::title::genre|genre` -> {raw id: {title, year, genres}}."""
  (ids, titles, genres), _ = split_rows(data, file_name, "latin-1", "::", 3, bad_rows)
  return {
      item: {"title": title, "year": _year(title, _TITLE_YEAR),
             "genres": [g for g in genre.split("|") if g]}
      for item, title, genre in zip(ids.tolist(), titles.tolist(), genres.tolist())}


def read_genre_names(data: bytes, file_name: str, bad_rows: BadRows) -> list[str]:
  """MovieLens-100K `u.genre` (`name|index`) -> names in index order."""
  (names, indices), lines = split_rows(data, file_name, "latin-1", "|", 2, bad_rows)
  values, ok = _parse_numbers(indices, lines, file_name, "genre index", bad_rows)
  if not ok.any():
    raise ValueError(f"{file_name}: no `name|index` genre rows.")
  return [name for _, name in sorted(zip(values[ok].tolist(), names[ok].tolist()))]


def read_u_item(data: bytes, file_name: str, genre_names: list[str],
                bad_rows: BadRows) -> dict[str, dict]:
  """MovieLens-100K `u.item` (id|title|release|video release|url|genre flags...)."""
  columns, _ = split_rows(data, file_name, "latin-1", "|", 5 + len(genre_names), bad_rows)
  flags = np.stack(columns[5:], axis=1) == "1"
  meta = {}
  for row, (item, title, release) in enumerate(
      zip(columns[0].tolist(), columns[1].tolist(), columns[2].tolist())):
    year = _year(title, _TITLE_YEAR) or _year(release, _DATE_YEAR)
    genres = [genre_names[g] for g in np.flatnonzero(flags[row])]
    meta[item] = {"title": title, "year": year, "genres": genres}
  return meta


def read_users_dat(data: bytes, file_name: str, bad_rows: BadRows) -> dict[str, dict]:
  """MovieLens-1M `id::gender::age::occupation code::zip` -> {raw id: demographics}."""
  (ids, genders, ages, occupations, zips), _ = split_rows(data, file_name, "latin-1", "::", 5,
                                                         bad_rows)
  meta = {}
  for user, gender, age, occupation, zip_code in zip(
      ids.tolist(), genders.tolist(), ages.tolist(), occupations.tolist(), zips.tolist()):
    if occupation.isdigit() and int(occupation) < len(ML1M_OCCUPATIONS):
      occupation = ML1M_OCCUPATIONS[int(occupation)]
    meta[user] = {"gender": gender, "age": _int_or_text(age), "occupation": occupation,
                  "zip": zip_code}
  return meta


def read_u_user(data: bytes, file_name: str, bad_rows: BadRows) -> dict[str, dict]:
  """MovieLens-100K `id|age|gender|occupation|zip` -> {raw id: demographics}."""
  (ids, ages, genders, occupations, zips), _ = split_rows(data, file_name, "latin-1", "|", 5,
                                                         bad_rows)
  return {
      user: {"gender": gender, "age": _int_or_text(age), "occupation": occupation,
             "zip": zip_code}
      for user, age, gender, occupation, zip_code in zip(
          ids.tolist(), ages.tolist(), genders.tolist(), occupations.tolist(), zips.tolist())}


# --------------------------------------------------------------------------------------------
# Finding (and fetching) files.


class FileSource:
  """Named files read from a folder or from inside a zip (matched by base name)."""

  def __init__(self, folder: Optional[str] = None, zip_path: Optional[str] = None):
    self.folder = folder
    self.zip_path = zip_path
    self._members = {}
    if zip_path:
      with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
          base = member.rsplit("/", 1)[-1]
          if base and "__MACOSX" not in member:
            self._members.setdefault(base, member)

  def has(self, name: str) -> bool:
    if self.zip_path:
      return name in self._members
    return os.path.isfile(os.path.join(self.folder, name))

  def read(self, name: str) -> tuple[bytes, str]:
    """Returns (bytes, display name for messages)."""
    if not self.has(name):
      raise FileNotFoundError(f"{self.zip_path or self.folder} has no {name}.")
    if self.zip_path:
      with zipfile.ZipFile(self.zip_path) as archive:
        return archive.read(self._members[name]), f"{self.zip_path}:{self._members[name]}"
    path = os.path.join(self.folder, name)
    with open(path, "rb") as f:
      return f.read(), path


def _missing_message(archive: Archive, data_dir: str, reason: str) -> str:
  return (f"MovieLens files not found in {data_dir!r}: expected {archive.ratings_file}, "
          f"{archive.movies_file} and {archive.users_file} there (or in "
          f"{archive.top_folder}/), or the archive {archive.file_name}. {reason} "
          f"Download {archive.url} and place it at "
          f"{os.path.join(data_dir, archive.file_name)} (or extract it there), then rerun.")


def download_archive(archive: Archive, data_dir: str,
                     urlopen: Optional[Callable[..., Any]] = None) -> str:
  """Downloads `archive` into data_dir atomically, checks its sha256 and md5, returns its path.

  `urlopen` defaults to urllib.request.urlopen (tests pass a fake).
  """
  urlopen = urlopen or urllib.request.urlopen
  os.makedirs(data_dir, exist_ok=True)
  destination = os.path.join(data_dir, archive.file_name)
  with files.atomic_writer(destination) as out:  # Not replaced unless the checksums match.
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with urlopen(archive.url, timeout=60) as response:
      while chunk := response.read(1 << 20):
        out.write(chunk)
        sha256.update(chunk)
        md5.update(chunk)
    if sha256.hexdigest() != archive.sha256 or md5.hexdigest() != archive.md5:
      raise ValueError(
          f"Checksum mismatch for {archive.url}: sha256 {sha256.hexdigest()} (expected "
          f"{archive.sha256}), md5 {md5.hexdigest()} (expected {archive.md5}). "
          f"Download it by hand and place it at {destination}.")
  return destination


def extract_archive(zip_path: str, data_dir: str) -> None:
  """Extracts every file of the zip flat into data_dir (dropping its top folder), atomically."""
  with zipfile.ZipFile(zip_path) as archive:
    for member in archive.namelist():
      base = member.rsplit("/", 1)[-1]
      if not base or "__MACOSX" in member:
        continue
      files.atomic_write_bytes(os.path.join(data_dir, base), archive.read(member))


def find_movielens(dataset: str, data_dir: str, download: bool,
                   archives: dict[str, Archive] = ARCHIVES,
                   urlopen: Optional[Callable[..., Any]] = None) -> FileSource:
  """Locates raw MovieLens files: data_dir, data_dir/<top folder>, the zip, or a download.

  Raises:
    FileNotFoundError: nothing found and downloading is off or failed; the message names the
      file to place where and its URL.
  """
  archive = archives[dataset]
  for folder in (data_dir, os.path.join(data_dir, archive.top_folder)):
    if os.path.isfile(os.path.join(folder, archive.ratings_file)):
      return FileSource(folder=folder)
  zip_path = os.path.join(data_dir, archive.file_name)
  if os.path.isfile(zip_path):
    return FileSource(zip_path=zip_path)
  if not download:
    raise FileNotFoundError(_missing_message(archive, data_dir, "Downloading is off (--download)."))
  logging.info("Downloading %s into %s", archive.url, data_dir)
  try:
    zip_path = download_archive(archive, data_dir, urlopen)
  except (urllib.error.URLError, OSError) as e:
    raise FileNotFoundError(
        _missing_message(archive, data_dir, f"Downloading failed ({e}).")) from e
  extract_archive(zip_path, data_dir)
  return FileSource(folder=data_dir)


# --------------------------------------------------------------------------------------------
# Ids, duplicates, splits.


def _natural_order(ids: np.ndarray) -> np.ndarray:
  """Sorted raw ids: by numeric value when all are digits, else lexicographically."""
  ids = np.unique(ids)
  if ids.size and all(s.isascii() and s.isdigit() for s in ids.tolist()):
    values = np.array([int(s) for s in ids.tolist()], dtype=object)
    ids = ids[np.argsort(values, kind="stable")]
  return ids


def _index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Position of each value in `ids` (unique, any order), -1 where absent."""
  if not ids.size:
    return np.full(values.shape, -1, np.int64)
  sorter = np.argsort(ids, kind="stable")
  positions = sorter[np.minimum(np.searchsorted(ids, values, sorter=sorter), ids.size - 1)]
  return np.where(ids[positions] == values, positions, -1)


def _pair_keys(interactions: Interactions, num_items: int) -> np.ndarray:
  return interactions.users.astype(np.int64) * num_items + interactions.items


def _keep_last_duplicates(rows: Interactions, num_items: int) -> tuple[Interactions, int]:
  """Keeps the last row of each user-item pair (rows in file order); sorts by (user, item)."""
  keys = _pair_keys(rows, num_items)
  _, last_reversed = np.unique(keys[::-1], return_index=True)
  keep = np.sort(len(keys) - 1 - last_reversed)
  kept = rows.select(keep)
  order = np.lexsort((kept.items, kept.users))
  return kept.select(order), len(keys) - len(keep)


def _ceil_fraction(fraction: float, counts: np.ndarray) -> np.ndarray:
  return np.ceil(np.round(fraction * counts, 6)).astype(np.int64)


def take_per_user(users: np.ndarray, num_users: int, counts: np.ndarray,
                  rng: np.random.Generator, protected: Optional[np.ndarray] = None
                  ) -> np.ndarray:
  """Randomly marks `counts[u]` rows of each user u; `protected` rows are marked last.

  Args:
    users: [n] internal user of each row.
    num_users: number of users.
    counts: [num_users] how many rows to take per user.
    rng: the random generator (one uniform draw per row, in row order).
    protected: optional [n] bool; these rows are taken only after all others.

  Returns:
    [n] bool mask of the taken rows.
  """
  keys = rng.random(users.shape[0])
  if protected is not None:
    keys = np.where(protected, 2.0, keys)
  order = np.lexsort((keys, users))
  sorted_users = users[order]
  starts = np.searchsorted(sorted_users, np.arange(num_users))
  rank = np.arange(users.shape[0]) - starts[sorted_users]
  taken = np.zeros(users.shape[0], bool)
  taken[order] = rank < counts[sorted_users]
  return taken


def _one_positive_per_user(train: Interactions, rng: np.random.Generator) -> np.ndarray:
  """[n] bool: one random +1 row of every user who has one."""
  keys = np.where(train.labels > 0, rng.random(len(train)), 2.0)
  order = np.lexsort((keys, train.users))
  first = np.ones(len(train), bool)
  first[1:] = train.users[order][1:] != train.users[order][:-1]
  chosen = np.zeros(len(train), bool)
  chosen[order] = first & (train.labels[order] > 0)
  return chosen


def carve_validation(train: Interactions, num_users: int, fraction: float,
                     rng: np.random.Generator) -> tuple[Interactions, Interactions]:
  """Splits train into (train, valid) per user (see the module docstring for the rule)."""
  if fraction <= 0 or not len(train):
    return train, Interactions.empty()
  sizes = np.bincount(train.users, minlength=num_users)
  counts = np.minimum(_ceil_fraction(fraction, sizes), np.maximum(sizes - 1, 0))
  keep_in_train = _one_positive_per_user(train, rng)
  valid = take_per_user(train.users, num_users, counts, rng, protected=keep_in_train)
  return train.select(~valid), train.select(valid)


# --------------------------------------------------------------------------------------------
# Loading.


def _read_file(path: str, flag: str) -> tuple[bytes, str]:
  if not path:
    raise ValueError(f"--{flag} is empty: dataset=lagcl needs --train_file and --test_file.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--{flag}={path!r}: file not found.")
  with open(path, "rb") as f:
    return f.read(), path


def _read_metadata(source: FileSource, bad_rows: BadRows
                   ) -> tuple[dict[str, dict], dict[str, dict]]:
  """(item meta, user meta) by raw id from whichever MovieLens files the source has."""
  items, users = {}, {}
  if source.has("movies.dat"):
    items = read_movies_dat(*source.read("movies.dat"), bad_rows)
  elif source.has("u.item"):
    genres = list(ML100K_GENRES)
    if source.has("u.genre"):
      genres = read_genre_names(*source.read("u.genre"), bad_rows)
    items = read_u_item(*source.read("u.item"), genres, bad_rows)
  if source.has("users.dat"):
    users = read_users_dat(*source.read("users.dat"), bad_rows)
  elif source.has("u.user"):
    users = read_u_user(*source.read("u.user"), bad_rows)
  if not items or not users:
    logging.warning("%s: no %s metadata (movies.dat or u.item, users.dat or u.user).",
                    source.zip_path or source.folder, "item" if not items else "user")
  return items, users


def _to_interactions(rows: RawRows, user_ids: np.ndarray, item_ids: np.ndarray
                     ) -> Interactions:
  return Interactions(_index_of(user_ids, rows.users).astype(np.int32),
                      _index_of(item_ids, rows.items).astype(np.int32), rows.labels)


def _dedupe(rows: Interactions, num_items: int, file_name: str, counts: dict) -> Interactions:
  rows, duplicates = _keep_last_duplicates(rows, num_items)
  if duplicates:
    logging.warning("%s: %d repeated user-item rows; kept the last of each.", file_name,
                    duplicates)
  counts["duplicate_rows"] += duplicates
  return rows


def _add_augmentation(config: Config, train: Interactions, others: list[Interactions],
                      user_ids: np.ndarray, item_ids: np.ndarray, bad_rows: BadRows,
                      counts: dict) -> Interactions:
  """Adds augment_file rows to train (unknown ids: error or counted skip; overlaps dropped)."""
  data, file_name = _read_file(config.augment_file, "augment_file")
  rows = read_paper_file(data, file_name, bad_rows)
  users, items = _index_of(user_ids, rows.users), _index_of(item_ids, rows.items)
  unknown = (users < 0) | (items < 0)
  for index in np.flatnonzero(unknown):
    which = "user" if users[index] < 0 else "item"
    value = str(rows.users[index] if which == "user" else rows.items[index])
    bad_rows.report(file_name, int(rows.lines[index]),
                    f"unknown {which} id {value!r} (not in train or test)")
  counts["augment_unknown_rows"] = int(unknown.sum())
  if unknown.any():
    logging.warning("%s: dropped %d rows with ids unknown to train/test.", file_name,
                    unknown.sum())
  augment = Interactions(users[~unknown].astype(np.int32), items[~unknown].astype(np.int32),
                         rows.labels[~unknown])
  num_items = item_ids.shape[0]
  augment = _dedupe(augment, num_items, file_name, counts)
  existing = np.concatenate([_pair_keys(part, num_items) for part in [train] + others])
  overlap = np.isin(_pair_keys(augment, num_items), existing)
  counts["augment_overlap_rows"] = int(overlap.sum())
  augment = augment.select(~overlap)
  counts["augmented_positives"] = int((augment.labels > 0).sum())
  counts["augmented_negatives"] = int((augment.labels < 0).sum())
  merged = Interactions.concatenate([train, augment])
  return merged.select(np.lexsort((merged.items, merged.users)))


def _split_stats(name: str, split: Interactions, summary: dict) -> None:
  summary[f"{name}_rows"] = len(split)
  summary[f"{name}_positives"] = int((split.labels > 0).sum())
  summary[f"{name}_negatives"] = int((split.labels < 0).sum())


def _evaluation_stats(dataset: Dataset) -> dict[str, int]:
  train, valid, test = dataset.train, dataset.valid, dataset.test
  has_train_positive = np.zeros(dataset.num_users, bool)
  has_train_positive[train.users[train.labels > 0]] = True
  seen_in_train = np.zeros(dataset.num_items, bool)
  seen_in_train[train.items] = True
  test_users = np.unique(test.users)
  cold = ~seen_in_train[test.items]
  return {
      "cold_test_items": int(np.unique(test.items[cold]).size),
      "cold_test_rows": int(cold.sum()),
      "test_users": int(test_users.size),
      "test_users_with_positive": int(np.unique(test.users[test.labels > 0]).size),
      "test_users_without_train_positives": int((~has_train_positive[test_users]).sum()),
      "valid_users_with_positive": int(np.unique(valid.users[valid.labels > 0]).size),
      "users_without_train_positives": int((~has_train_positive).sum()),
      "items_without_train_rows": int((~seen_in_train).sum()),
  }


def load_dataset(config: Config) -> Dataset:
  """Loads, checks and splits `config.dataset` (see the module docstring for every rule)."""
  bad_rows = BadRows(config.skip_bad_rows)
  counts: dict[str, Any] = {"duplicate_rows": 0, "augmented_positives": 0,
                            "augmented_negatives": 0, "augment_unknown_rows": 0,
                            "augment_overlap_rows": 0}
  if config.dataset == "lagcl":
    train_rows = read_paper_file(*_read_file(config.train_file, "train_file"), bad_rows)
    test_rows = read_paper_file(*_read_file(config.test_file, "test_file"), bad_rows)
    parts = [train_rows, test_rows]
    metadata = None
    if config.metadata_dir:
      if not os.path.isdir(config.metadata_dir):
        raise FileNotFoundError(f"--metadata_dir={config.metadata_dir!r}: no such folder.")
      metadata = FileSource(folder=config.metadata_dir)
  elif config.dataset in ARCHIVES:
    archive = ARCHIVES[config.dataset]
    metadata = find_movielens(config.dataset, config.data_dir, config.download)
    parts = [read_ratings(*metadata.read(archive.ratings_file), config.like_threshold,
                          bad_rows)]
  else:
    raise ValueError(f"--dataset={config.dataset!r}: expected ml-100k, ml-1m or lagcl.")

  user_ids = _natural_order(np.concatenate([p.users for p in parts]))
  item_ids = _natural_order(np.concatenate([p.items for p in parts]))
  num_users, num_items = user_ids.shape[0], item_ids.shape[0]
  splits = [_dedupe(_to_interactions(p, user_ids, item_ids), num_items, p.file_name, counts)
            for p in parts]
  if config.dataset == "lagcl":
    train, test = splits
    in_train = np.isin(_pair_keys(test, num_items), _pair_keys(train, num_items))
    if in_train.any():
      logging.warning("%s: dropped %d test pairs that are also in %s.", test_rows.file_name,
                      in_train.sum(), train_rows.file_name)
    test = test.select(~in_train)
  else:
    ratings = splits[0]
    sizes = np.bincount(ratings.users, minlength=num_users)
    in_test = take_per_user(ratings.users, num_users,
                            _ceil_fraction(config.test_fraction, sizes),
                            np.random.default_rng(config.split_seed))
    train, test = ratings.select(~in_test), ratings.select(in_test)
    in_train = np.zeros(0, bool)
  counts["train_test_overlap"] = int(in_train.sum())
  counts["train_rows_before_valid"] = len(train)
  train, valid = carve_validation(train, num_users, config.valid_fraction,
                                  np.random.default_rng([config.split_seed, 1]))
  if config.augment_file:
    train = _add_augmentation(config, train, [valid, test], user_ids, item_ids, bad_rows,
                              counts)

  item_meta, user_meta = _read_metadata(metadata, bad_rows) if metadata else ({}, {})
  dataset = Dataset(
      name=config.dataset, user_ids=user_ids, item_ids=item_ids, train=train, valid=valid,
      test=test, user_meta=[user_meta.get(u, {}) for u in user_ids.tolist()],
      item_meta=[item_meta.get(i, {}) for i in item_ids.tolist()], summary={})
  dataset.summary.update(dataset=config.dataset, users=num_users, items=num_items)
  for name, split in (("train", train), ("valid", valid), ("test", test)):
    _split_stats(name, split, dataset.summary)
  dataset.summary.update(counts)
  dataset.summary.update(_evaluation_stats(dataset))
  dataset.summary.update(
      users_with_metadata=sum(bool(m) for m in dataset.user_meta),
      items_with_metadata=sum(bool(m) for m in dataset.item_meta),
      skipped_rows=bad_rows.count, skipped_examples=bad_rows.examples)
  logging.info("%s", format_summary(dataset.summary))
  return dataset


def format_summary(summary: dict[str, Any]) -> str:
  """The load summary as aligned `key: value` lines."""
  width = max(map(len, summary), default=0)
  lines = ["Data summary:"]
  for key, value in summary.items():
    if isinstance(value, list):
      value = "; ".join(map(str, value)) if value else "-"
    elif isinstance(value, int) and not isinstance(value, bool):
      value = f"{value:,}"
    lines.append(f"  {key:<{width}}  {value}")
  return "\n".join(lines)
