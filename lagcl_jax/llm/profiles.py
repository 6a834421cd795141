"""Text profiles: per user from train interactions only (demographics, liked and disliked titles
and genres) with an optional one-sentence LLM summary, per item from metadata (title, year,
genres). Written as JSON; read back from that layout or from the paper's merged_profiles.json
(a list of {user_id, user_profile: {summarization}, positive_items: [{item_id, item_profile}],
negative_items: [...]})."""

import collections
import dataclasses
import json
import os
from typing import Any, Optional

from absl import logging
import numpy as np

from lagcl_jax.data_types import Dataset
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import parsing
from lagcl_jax.llm import prompts

FORMAT = "lagcl_jax.profiles"
_GENDERS = {"M": "male", "F": "female"}


@dataclasses.dataclass
class Profiles:
  """Prompt-ready texts per internal user and item, and counts from reading them."""
  user_text: list[str]
  item_text: list[str]
  report: dict[str, Any]


def item_facts(meta: dict[str, Any], raw_id: str) -> str:
  """E.g. "Toy Story (1995); genres: Animation, Comedy" (the raw id when there is no title)."""
  text = meta.get("title") or f"movie {raw_id}"
  if meta.get("year") and str(meta["year"]) not in text:
    text += f" ({meta['year']})"
  if meta.get("genres"):
    text += f"; genres: {', '.join(meta['genres'])}"
  return text


def _demographics(meta: dict[str, Any]) -> str:
  parts = []
  if meta.get("gender"):
    parts.append(_GENDERS.get(meta["gender"], str(meta["gender"])))
  if meta.get("age") not in (None, ""):
    parts.append(f"age {meta['age']}")
  if meta.get("occupation"):
    parts.append(str(meta["occupation"]))
  return ", ".join(parts)


def _top_genres(dataset: Dataset, items: np.ndarray, count: int) -> list[str]:
  counter = collections.Counter(g for i in items for g in dataset.item_meta[i].get("genres", []))
  return [genre for genre, _ in counter.most_common(count)]


def user_facts(dataset: Dataset, users: np.ndarray, max_titles: int) -> list[str]:
  """The template profile of each user, from train rows only; the most popular titles first."""
  train = dataset.train
  popularity = np.bincount(train.items[train.labels > 0], minlength=dataset.num_items)
  order = np.lexsort((train.items, -popularity[train.items], train.users))
  by_user = train.select(order)
  starts = np.searchsorted(by_user.users, np.arange(dataset.num_users + 1))
  texts = []
  for u in users:
    rows = slice(starts[u], starts[u + 1])
    items, labels = by_user.items[rows], by_user.labels[rows]
    liked, disliked = items[labels > 0], items[labels < 0]
    lines = []
    demographics = _demographics(dataset.user_meta[u])
    if demographics:
      lines.append(f"Viewer: {demographics}.")
    for name, chosen, genres in (("Liked", liked, 3), ("Disliked", disliked, 2)):
      if chosen.size:
        titles = [dataset.item_meta[i].get("title") or f"movie {dataset.item_ids[i]}"
                  for i in chosen[:max_titles]]
        lines.append(f"{name} movies: {'; '.join(titles)}.")
        top = _top_genres(dataset, chosen, genres)
        if top:
          lines.append(f"{name} genres: {', '.join(top)}.")
    texts.append("\n".join(lines) or "No known ratings.")
  return texts


def _user_text(facts: str, summary: Optional[str]) -> str:
  return f"{facts}\nSummary: {summary}" if summary else facts


def template_profiles(dataset: Dataset, max_titles: int) -> Profiles:
  """Profiles of every user and item without any LLM output."""
  users = np.arange(dataset.num_users)
  return Profiles(
      user_text=user_facts(dataset, users, max_titles),
      item_text=[item_facts(m, r) for m, r in zip(dataset.item_meta, dataset.item_ids.tolist())],
      report={})


def build_profiles(dataset: Dataset, users: np.ndarray, llm: Optional[cached_llm.CachedLLM],
                   max_titles: int, max_new_tokens: int) -> dict[str, Any]:
  """The profiles JSON of `users` (all items always); summaries when `llm` is given.

  An empty or unusable summary counts as a parse failure and is left out.
  """
  facts = user_facts(dataset, users, max_titles)
  summaries: list[Optional[str]] = [None] * len(facts)
  if llm is not None:
    answers = llm.generate([prompts.summary_prompt(f) for f in facts], max_new_tokens,
                           "profiles: summaries")
    summaries = [parsing.clean_summary(a) for a in answers]
    llm.stats.parse_failures += sum(s is None for s in summaries)
  return {
      "format": FORMAT,
      "users": [{"user_id": dataset.user_ids[u], "facts": f, "summary": s}
                for u, f, s in zip(users.tolist(), facts, summaries)],
      "items": [{"item_id": r, "profile": item_facts(m, r)}
                for m, r in zip(dataset.item_meta, dataset.item_ids.tolist())],
  }


def _text(value: Any) -> str:
  """A profile field as text: a string, or a dict's `summarization` (else its JSON)."""
  if isinstance(value, dict):
    value = value.get("summarization", json.dumps(value, sort_keys=True))
  return value.strip() if isinstance(value, str) else ""


def _apply(texts: list[str], entries: list[dict], id_field: str, text_of, index: dict[str, int],
           kind: str, report: dict[str, Any]) -> None:
  """Overwrites template texts with the file's; bad ids and empty texts are counted."""
  internal, counts = parsing.resolve_ids([e.get(id_field) for e in entries], index)
  empty = 0
  for entry, target in zip(entries, internal):
    if target < 0:
      continue
    text = text_of(entry)
    if text:
      texts[target] = text
    else:
      empty += 1
  report.update({f"{kind}_{name}_ids": n for name, n in counts.items()})
  report[f"{kind}_empty_profiles"] = empty
  report[f"{kind}s_from_file"] = int((internal >= 0).sum()) - empty


def load_profiles(path: str, dataset: Dataset, max_titles: int) -> Profiles:
  """Reads a profiles JSON (this module's layout or the paper's); users and items the file
  lacks keep their template profile. Never raises on bad entries: they are counted in
  `report` (and logged)."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
  profiles = template_profiles(dataset, max_titles)
  users = {r: u for u, r in enumerate(dataset.user_ids.tolist())}
  items = {r: i for i, r in enumerate(dataset.item_ids.tolist())}
  report: dict[str, Any] = {"file": path}
  if isinstance(data, dict) and data.get("format") == FORMAT:
    user_entries = [e for e in data.get("users", []) if isinstance(e, dict)]
    item_entries = [e for e in data.get("items", []) if isinstance(e, dict)]
    user_of = lambda e: _user_text(_text(e.get("facts")), _text(e.get("summary")))
    item_of = lambda e: _text(e.get("profile"))
  elif isinstance(data, list):  # the paper's merged_profiles.json
    user_entries = [e for e in data if isinstance(e, dict)]
    item_entries = [i for e in user_entries for key in ("positive_items", "negative_items")
                    for i in (e.get(key) or []) if isinstance(i, dict)]
    user_of = lambda e: _text(e.get("user_profile"))
    item_of = lambda e: _text(e.get("item_profile"))
  else:
    raise ValueError(f"{path}: neither a {FORMAT} file nor the paper's merged_profiles list.")
  _apply(profiles.user_text, user_entries, "user_id", user_of, users, "user", report)
  _apply(profiles.item_text, item_entries, "item_id", item_of, items, "item", report)
  dropped = {k: v for k, v in report.items()
             if k.endswith(("invalid_ids", "unknown_ids", "empty_profiles")) and v}
  if dropped:
    logging.warning("%s: dropped profile entries: %s", path, dropped)
  logging.info("Profiles from %s: %s", path, report)
  profiles.report = report
  return profiles


def profiles_for_stage(path: str, explicit: bool, dataset: Dataset, max_titles: int) -> Profiles:
  """The stage's profiles: the file when present; template profiles when the default file does
  not exist yet (an explicitly given file must exist)."""
  if os.path.exists(path):
    return load_profiles(path, dataset, max_titles)
  if explicit:
    raise FileNotFoundError(f"--profiles_file={path}: no such file.")
  logging.warning("No profiles at %s: using template profiles without LLM summaries "
                  "(run --stage=profiles first to add them).", path)
  return template_profiles(dataset, max_titles)
