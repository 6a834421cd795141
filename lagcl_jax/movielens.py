"""MovieLens-100K and -1M: the GroupLens files, from a folder, the original zip or a download.

Read: ratings (`u.data` / `ratings.dat`: user, item, rating, timestamp), item metadata (`u.item`
with `u.genre`, `movies.dat`: title, year, genres) and user demographics (`u.user`, `users.dat`).
A missing archive is downloaded from GroupLens (`--download`) and checksum-verified.
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
from lagcl_jax.parsing import BadRows, RawRows, parse_numbers, parse_times, split_rows


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

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")



def read_ratings(data: bytes, file_name: str, like_threshold: float,
                 bad_rows: BadRows) -> RawRows:
  """Reads MovieLens `user item rating timestamp` rows (`::` or whitespace separated).

  Rating >= like_threshold becomes +1, anything lower -1.
  """
  data = data.replace(b"::", b"\t")  # No ML field contains whitespace.
  (users, items, ratings, stamps), lines = split_rows(data, file_name, "latin-1", None, 4,
                                                      bad_rows)
  values, ok = parse_numbers(ratings, lines, file_name, "rating", bad_rows)
  times, timed = parse_times(stamps, lines, file_name, bad_rows)
  labels = np.where(values >= like_threshold, 1, -1).astype(np.int8)
  return RawRows(file_name, users, items, labels, lines, times).select(ok & timed)


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
  values, ok = parse_numbers(indices, lines, file_name, "genre index", bad_rows)
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


def read_metadata(source: FileSource, bad_rows: BadRows
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
