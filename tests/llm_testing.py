"""Helpers for the LLM tests: a tiny random-weight causal LM with a tokenizer built offline, a
fake driver that counts calls, and a small data set with movie metadata."""

import os

import numpy as np

from lagcl_jax.data_types import Dataset, Interactions

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def build_tiny_model(directory: str, chat_template: bool = True, seed: int = 0) -> str:
  """Saves a 2-layer Llama with random weights and a byte-level BPE tokenizer to `directory`."""
  # pylint: disable=g-import-not-at-top
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  import torch
  import transformers

  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  corpus = ["Viewer profile: liked movies, disliked genres. Would this viewer enjoy the "
            "candidate movie? Answer Yes or No. Name: Characteristics: Reasoning:"] * 4
  tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                              eos_token="<eos>")
  if chat_template:
    fast.chat_template = CHAT_TEMPLATE
  config = transformers.LlamaConfig(
      vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
      initializer_range=0.3, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
      bos_token_id=fast.eos_token_id, tie_word_embeddings=False)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config)
  model.generation_config.eos_token_id = fast.eos_token_id
  model.save_pretrained(directory)
  fast.save_pretrained(directory)
  return directory


class FakeDriver:
  """Driver stand-in: deterministic outputs from the text, counts calls, can fail on demand."""

  def __init__(self, identity: str = "fake", batch_size: int = 2, fail_after_batches=None):
    self.identity = identity
    self.batch_size = batch_size
    self.system_prompt = "system"
    self.fail_after_batches = fail_after_batches
    self.batches = 0
    self.computed: list[str] = []

  def _each_batch(self, texts, make, on_batch):
    out = []
    for start in range(0, len(texts), self.batch_size):
      if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
        raise RuntimeError("interrupted")
      chunk = texts[start:start + self.batch_size]
      values = [make(t) for t in chunk]
      self.batches += 1
      self.computed += chunk
      on_batch(np.arange(start, start + len(chunk)), values)
      out += values
    return out

  def generate(self, prompts, max_new_tokens, on_batch):
    return self._each_batch(prompts, lambda t: f"answer to {t[:20]} ({max_new_tokens})",
                            on_batch)

  def score(self, prompts, answers, on_batch):
    return np.array(self._each_batch(
        prompts, lambda t: np.array([-(len(t) % 7) - 0.5 * a for a in range(len(answers))],
                                    np.float32), on_batch))

  def embed(self, texts, on_batch):
    return np.array(self._each_batch(
        texts, lambda t: np.array([len(t), t.count("a"), 1.0], np.float32), on_batch))


def fake_llm(cache_dir: str):
  """A CachedLLM over a FakeDriver (batches of 4) and a fresh cache in `cache_dir`."""
  # pylint: disable=g-import-not-at-top
  from lagcl_jax.llm import cache as cache_lib
  from lagcl_jax.llm import cached_llm
  return cached_llm.CachedLLM(FakeDriver(batch_size=4), cache_lib.PromptCache(cache_dir, "test"),
                              cached_llm.StageStats())


def movie_dataset(num_users: int = 12, num_items: int = 30, seed: int = 0) -> Dataset:
  """Users with demographics rate ~10 items each (about 2/3 liked); titled items with genres.

  Each user's rows are split 6 train / 2 valid / 2 test, so every user has valid and test
  items; the first train row of every user is a positive.
  """
  rng = np.random.default_rng(seed)
  parts = {"train": [], "valid": [], "test": []}
  for user in range(num_users):
    items = rng.choice(num_items, 10, replace=False)
    labels = np.where(rng.random(10) < 0.67, 1, -1).astype(np.int8)
    labels[[0, 6, 8]] = 1  # a train, a valid and a test positive
    for name, rows in (("train", slice(0, 6)), ("valid", slice(6, 8)), ("test", slice(8, 10))):
      parts[name].append(Interactions(np.full(len(items[rows]), user, np.int32),
                                      items[rows].astype(np.int32), labels[rows]))
  splits = {name: Interactions.concatenate(p) for name, p in parts.items()}
  return Dataset(
      name="movies", user_ids=np.array([f"u{u:02d}" for u in range(num_users)]),
      item_ids=np.array([str(100 + i) for i in range(num_items)]), train=splits["train"],
      valid=splits["valid"], test=splits["test"],
      user_meta=[{"gender": "MF"[u % 2], "age": 20 + u, "occupation": "writer", "zip": "1"}
                 for u in range(num_users)],
      item_meta=[{"title": f"Movie {i} ({1980 + i})", "year": 1980 + i,
                  "genres": [GENRES[i % 5], GENRES[(i * 3) % 5]]} for i in range(num_items)],
      summary={})


def write_movie_files(directory: str, dataset: Dataset) -> dict[str, str]:
  """The data set as the paper's train/test files plus ML-1M style movies.dat / users.dat
  (valid rows go to train; the loader carves its own validation split)."""
  os.makedirs(directory, exist_ok=True)
  paths = {name: os.path.join(directory, name)
           for name in ("train.txt", "test.txt", "movies.dat", "users.dat")}
  for name, parts in (("train.txt", [dataset.train, dataset.valid]),
                      ("test.txt", [dataset.test])):
    rows = Interactions.concatenate(parts)
    with open(paths[name], "w") as f:
      f.writelines(f"{dataset.user_ids[u]}\t{dataset.item_ids[i]}\t{l}\n"
                   for u, i, l in zip(rows.users, rows.items, rows.labels))
  with open(paths["movies.dat"], "w", encoding="latin-1") as f:
    f.writelines(f"{r}::{m['title']}::{'|'.join(m['genres'])}\n"
                 for r, m in zip(dataset.item_ids, dataset.item_meta))
  with open(paths["users.dat"], "w", encoding="latin-1") as f:
    f.writelines(f"{r}::{m['gender']}::{m['age']}::1::{m['zip']}\n"
                 for r, m in zip(dataset.user_ids, dataset.user_meta))
  return paths
