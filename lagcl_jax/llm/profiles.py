"""Text profiles: per user from train interactions only (demographics, liked and disliked titles,
net liked and disliked categories) with an optional one-sentence LLM summary, per item from its
metadata, any domain (`metadata_text`). Written as JSON; read back from that layout or from the paper's merged_profiles.json
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
from lagcl_jax.llm import metadata_text
from lagcl_jax.llm import parsing
from lagcl_jax.llm import prompts

FORMAT = "lagcl_jax.profiles"


@dataclasses.dataclass
class Profiles:
  """Prompt-ready texts per internal user and item, the items' noun ("movie", "wine"), and
  counts from reading them."""
  user_text: list[str]
  item_text: list[str]
  noun: str
  report: dict[str, Any]


def _train_counts(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Per item: the number of train likes and dislikes."""
  train = dataset.train
  return (np.bincount(train.items[train.labels > 0], minlength=dataset.num_items),
          np.bincount(train.items[train.labels < 0], minlength=dataset.num_items))


def item_texts(dataset: Dataset, noun: str) -> list[str]:
  """Every item's profile text from its metadata (see `metadata_text.item_text`)."""
  liked, disliked = _train_counts(dataset)
  return [metadata_text.item_text(m, r, noun, int(l), int(d)) for m, r, l, d in
          zip(dataset.item_meta, dataset.item_ids.tolist(), liked.tolist(), disliked.tolist())]


def net_categories(item_categories: list[list[str]], liked: np.ndarray, disliked: np.ndarray,
                   num_liked: int, num_disliked: int) -> tuple[list[str], list[str]]:
  """A user's liked and disliked categories by net preference.

  net(c) = (liked items in c) - (disliked items in c). Liked: net > 0, largest net first;
  disliked: net < 0, most negative first (ties: more items, then name). So no category is
  both liked and disliked.
  """
  counts = collections.defaultdict(lambda: [0, 0])
  for column, items in ((0, liked), (1, disliked)):
    for i in items.tolist():
      for category in item_categories[i]:
        counts[category][column] += 1
  net = {c: up - down for c, (up, down) in counts.items()}
  liked_order = sorted((c for c in net if net[c] > 0),
                       key=lambda c: (-net[c], -counts[c][0], c))
  disliked_order = sorted((c for c in net if net[c] < 0),
                          key=lambda c: (net[c], -counts[c][1], c))
  return liked_order[:num_liked], disliked_order[:num_disliked]


def user_facts(dataset: Dataset, users: np.ndarray, max_titles: int, noun: str) -> list[str]:
  """The template profile of each user, from train rows only: demographics, counts, the most
  popular liked and disliked titles, and per category field (e.g. genres) the net liked and
  disliked categories."""
  train = dataset.train
  popularity = np.bincount(train.items[train.labels > 0], minlength=dataset.num_items)
  order = np.lexsort((train.items, -popularity[train.items], train.users))
  by_user = train.select(order)
  starts = np.searchsorted(by_user.users, np.arange(dataset.num_users + 1))
  titles = [metadata_text.item_title(m) for m in dataset.item_meta]
  fields = {field: [metadata_text.item_categories(m, field) for m in dataset.item_meta]
            for field in metadata_text.category_fields(dataset.item_meta)}
  nouns = metadata_text.plural(noun)
  texts = []
  for u in users:
    rows = slice(starts[u], starts[u + 1])
    items, labels = by_user.items[rows], by_user.labels[rows]
    liked, disliked = items[labels > 0], items[labels < 0]
    lines = []
    demographics = metadata_text.user_text(dataset.user_meta[u])
    if demographics:
      lines.append(f"User: {demographics}.")
    if items.size:
      lines.append(f"In training: {liked.size} liked and {disliked.size} disliked {nouns}.")
    for name, chosen in (("Liked", liked), ("Disliked", disliked)):
      named = [titles[i] for i in chosen.tolist() if titles[i]][:max_titles]
      if named:
        lines.append(f"{name} {nouns}: {'; '.join(named)}.")
    for field, categories in fields.items():
      label = metadata_text.field_label(field)
      for name, values in zip(("Liked", "Disliked"),
                              net_categories(categories, liked, disliked, 3, 2)):
        if values:
          lines.append(f"{name} {label}: {', '.join(values)}.")
    texts.append("\n".join(lines) or "No ratings in training.")
  return texts


def _user_text(facts: str, summary: Optional[str]) -> str:
  return f"{facts}\nSummary: {summary}" if summary else facts


def template_profiles(dataset: Dataset, max_titles: int, noun: str) -> Profiles:
  """Profiles of every user and item without any LLM output."""
  users = np.arange(dataset.num_users)
  return Profiles(user_text=user_facts(dataset, users, max_titles, noun),
                  item_text=item_texts(dataset, noun), noun=noun, report={})


def text_report(dataset: Dataset) -> dict[str, Any]:
  """What the item texts are made of: the category fields found and how many items the data
  does not describe (logged as a warning: those are described by interaction counts only)."""
  without = sum(not metadata_text.has_text(m) for m in dataset.item_meta)
  if without:
    logging.warning("%d of %d items have no title or other text in the data: their profiles "
                    "say so and give only their train like/dislike counts%s.", without,
                    dataset.num_items, " (this data set has no item text at all, so the LLM "
                    "sees interaction counts only)" if without == dataset.num_items else "")
  return {"items_without_text": without,
          "category_fields": metadata_text.category_fields(dataset.item_meta)}


def build_profiles(dataset: Dataset, users: np.ndarray, llm: Optional[cached_llm.CachedLLM],
                   max_titles: int, max_new_tokens: int, noun: str) -> dict[str, Any]:
  """The profiles JSON of `users` (all items always); summaries when `llm` is given.

  An empty or unusable summary counts as a parse failure and is left out.
  """
  facts = user_facts(dataset, users, max_titles, noun)
  summaries: list[Optional[str]] = [None] * len(facts)
  if llm is not None:
    answers = llm.generate([prompts.summary_prompt(f, noun) for f in facts], max_new_tokens,
                           "profiles: summaries")
    summaries = [parsing.clean_summary(a) for a in answers]
    llm.stats.parse_failures += sum(s is None for s in summaries)
  return {
      "format": FORMAT,
      "users": [{"user_id": dataset.user_ids[u], "facts": f, "summary": s}
                for u, f, s in zip(users.tolist(), facts, summaries)],
      "items": [{"item_id": r, "profile": t}
                for r, t in zip(dataset.item_ids.tolist(), item_texts(dataset, noun))],
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


def load_profiles(path: str, dataset: Dataset, max_titles: int, noun: str) -> Profiles:
  """Reads a profiles JSON (this module's layout or the paper's); users and items the file
  lacks keep their template profile. Never raises on bad entries: they are counted in
  `report` (and logged)."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
  profiles = template_profiles(dataset, max_titles, noun)
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


def profiles_for_stage(path: str, explicit: bool, dataset: Dataset, max_titles: int,
                       noun: str) -> Profiles:
  """The stage's profiles: the file when present; template profiles when the default file does
  not exist yet (an explicitly given file must exist)."""
  if os.path.exists(path):
    return load_profiles(path, dataset, max_titles, noun)
  if explicit:
    raise FileNotFoundError(f"--profiles_file={path}: no such file.")
  logging.warning("No profiles at %s: using template profiles without LLM summaries "
                  "(run --stage=profiles first to add them).", path)
  return template_profiles(dataset, max_titles, noun)
