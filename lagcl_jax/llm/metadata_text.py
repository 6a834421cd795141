"""Item and user metadata as prompt text, for any domain.

`Dataset.item_meta[i]` is whatever the data's reader found (MovieLens: title, year, genres;
X-Wines: WineName, Type, Grapes, Harmonize, RegionName, ...; Last.fm: name). An item's text is
its title (the first present of `title`, `name`, or a `<Something>Name` field) followed by every
other field as `key: value` (lists joined, long ones cut); ids, URLs and empty values are left
out. `year` and `genres` read as today's MovieLens profiles ("Heat (1995); genres: Action").

An item with no usable text is never given an invented title: its text says that the data has
no description of it and gives its train interaction counts instead.
"""

import ast
import collections
import re
from typing import Any, Optional

import numpy as np

from lagcl_jax.data_types import Dataset

MOVIELENS_DATASETS = ("ml-100k", "ml-1m")
MAX_LIST_VALUES = 6  # list entries shown per field
MAX_VALUE_CHARS = 120
MAX_CATEGORY_VALUES = 20  # a scalar text field with at most this many distinct values is a category
_TITLE_KEYS = ("title", "name")
_SKIPPED_KEYS = {"url", "website", "zip", "zip_code", "picture_url", "pictureurl"}
_GENDERS = {"M": "male", "F": "female"}


def default_item_noun(dataset: Dataset) -> str:
  """'movie' for MovieLens data (ml-100k, ml-1m, or the paper's files with MovieLens titles),
  else 'item'."""
  if dataset.name in MOVIELENS_DATASETS:
    return "movie"
  if dataset.name == "lagcl" and any(m.get("title") and "genres" in m for m in dataset.item_meta):
    return "movie"
  return "item"


def plural(noun: str) -> str:
  """English plural of a one-word noun: movie -> movies, wine -> wines, story -> stories."""
  if re.search(r"[^aeiou]y$", noun):
    return noun[:-1] + "ies"
  if noun.endswith(("s", "x", "ch", "sh")):
    return noun + "es"
  return noun + "s"


def _is_id_key(key: str) -> bool:
  """id, user_id, RegionID, artistId (not 'paid' or 'acid')."""
  return key.lower() in ("id", "ids") or key.lower().endswith("_id") or \
      bool(re.search(r"[a-z](ID|Id)$", key))


def field_label(key: str) -> str:
  """A field name as words: 'RegionName' -> 'region name', 'release_date' -> 'release date'."""
  return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ").lower().strip()


def _values(value: Any) -> list[str]:
  """A field's value as a list of non-empty strings (Python-style list strings are read)."""
  if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
  if isinstance(value, (list, tuple, np.ndarray)):
    items = list(value)
  else:
    items = [value]
  texts = []
  for item in items:
    if item is None or isinstance(item, float) and np.isnan(item):
      continue
    text = " ".join(str(item).split())
    if text and not text.lower().startswith(("http://", "https://", "www.")):
      texts.append(text)
  return texts


def title_key(meta: dict[str, Any]) -> Optional[str]:
  """The key of the item's title: title, name, else the first `<Something>Name` field."""
  for key in _TITLE_KEYS:
    if _values(meta.get(key)):
      return key
  for key in meta:
    if key.endswith("Name") or key.lower().endswith("_name"):
      if _values(meta[key]):
        return key
  return None


def item_title(meta: dict[str, Any]) -> Optional[str]:
  """The item's title (None when the metadata has none)."""
  key = title_key(meta)
  return ", ".join(_values(meta[key])) if key else None


def _field_text(values: list[str]) -> str:
  shown = ", ".join(values[:MAX_LIST_VALUES]) + (", ..." if len(values) > MAX_LIST_VALUES else "")
  return shown if len(shown) <= MAX_VALUE_CHARS else shown[:MAX_VALUE_CHARS - 3] + "..."


def _described_fields(meta: dict[str, Any], skip: set[str]) -> list[str]:
  """`key: value` of every usable field not in `skip`; a field repeating the values of the
  title or of an earlier field (a reader's `title` copy of `WineName`, or RecBole's tokenised
  `movie_title` of a title) is shown once."""
  parts = []
  shown = {" ".join(_values(meta[key])) for key in skip if key in meta}
  for key, value in meta.items():
    if key in skip or _is_id_key(key) or key.lower() in _SKIPPED_KEYS:
      continue
    values = _values(value)
    if values and " ".join(values) not in shown:
      shown.add(" ".join(values))
      parts.append(f"{field_label(key)}: {_field_text(values)}")
  return parts


def no_text_description(noun: str, raw_id: str, liked: int, disliked: int) -> str:
  """The text of an item the data does not describe: its id and train counts, said as such."""
  article = "An" if noun[:1].lower() in "aeiou" else "A"
  return (f"{article} {noun} with no title or description in the data (id {raw_id}); in "
          f"training {liked} users liked it and {disliked} disliked it")


def item_text(meta: dict[str, Any], raw_id: str, noun: str, liked: int = 0,
              disliked: int = 0) -> str:
  """E.g. "Toy Story (1995); genres: Animation, Comedy" or "Espumante Moscatel; type:
  Sparkling; grapes: Muscat/Moscato; ..."; the no-text description when nothing is usable."""
  key = title_key(meta)
  fields = _described_fields(meta, {key, "year"} if key else {"year"})
  if key is None and not fields:
    return no_text_description(noun, raw_id, liked, disliked)
  text = item_title(meta) if key else f"an untitled {noun} (id {raw_id})"
  year = _values(meta.get("year"))
  if year and year[0] not in text:
    text += f" ({year[0]})"
  return "; ".join([text] + fields)


def has_text(meta: dict[str, Any]) -> bool:
  """Whether the metadata holds any usable text (a title or another described field)."""
  return title_key(meta) is not None or bool(_described_fields(meta, {"year"}))


def category_fields(item_meta: list[dict[str, Any]]) -> list[str]:
  """The fields whose values are categories, in first-seen order: list-of-text fields (genres,
  grapes, food pairings) and text fields with 2..MAX_CATEGORY_VALUES distinct values (a wine's
  type or body), never a title, id, URL or number."""
  distinct: dict[str, set] = collections.defaultdict(set)
  listed = set()
  numeric = set()
  present, copies = collections.Counter(), collections.Counter()  # title copies: on every item
  for meta in item_meta:
    title = title_key(meta)
    for key, value in meta.items():
      if key == title or key == "year" or _is_id_key(key) or key.lower() in _SKIPPED_KEYS:
        continue
      if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        numeric.add(key)
        continue
      values = _values(value)
      present[key] += 1
      copies[key] += bool(title) and values == _values(meta[title])
      if isinstance(value, (list, tuple, np.ndarray)) or (
          isinstance(value, str) and value.startswith("[") and len(values) != 1):
        listed.add(key)
      distinct[key].update(values)
  fields, seen = [], set()
  for key, values in distinct.items():
    if key in numeric or copies[key] == present[key] or any(re.fullmatch(r"-?[\d.]+", v)
                                                    for v in values):
      continue
    if key in listed or 2 <= len(values) <= MAX_CATEGORY_VALUES:
      column = tuple(tuple(item_categories(meta, key)) for meta in item_meta)
      if column not in seen:  # e.g. a reader's `genres` copy of X-Wines' `Type`
        seen.add(column)
        fields.append(key)
  return fields


def item_categories(meta: dict[str, Any], field: str) -> list[str]:
  """The item's distinct category values of `field`."""
  return list(dict.fromkeys(_values(meta.get(field))))


def user_text(meta: dict[str, Any]) -> str:
  """Demographics as "male, age 20, writer" and other fields as `key: value` (ids, URLs and zip
  codes left out)."""
  parts = []
  if meta.get("gender"):
    parts.append(_GENDERS.get(meta["gender"], str(meta["gender"])))
  if meta.get("age") not in (None, ""):
    parts.append(f"age {meta['age']}")
  if meta.get("occupation"):
    parts.append(str(meta["occupation"]))
  return ", ".join(parts + _described_fields(meta, {"gender", "age", "occupation"}))
