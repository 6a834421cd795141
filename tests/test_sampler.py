"""Tests for lagcl_jax.sampler: determinism, resume, negatives, padding, first occurrences."""

import collections

import numpy as np
import pytest

from lagcl_jax import sampler as sampler_lib

import synthetic

NUM_ITEMS = 120
NUM_GROUPS = 4
ITEM_GROUPS = np.arange(NUM_ITEMS) % NUM_GROUPS


@pytest.fixture(scope="module")
def train():
  return synthetic.random_dataset(num_users=25, num_items=NUM_ITEMS, per_user=16, seed=5).train


def make_sampler(train, use_groups=True, hard_from_dislikes=False, batch_size=32, seed=0,
                 item_groups=ITEM_GROUPS, num_items=NUM_ITEMS):
  return sampler_lib.BatchSampler(train, int(train.users.max()) + 1, num_items, item_groups,
                                  use_groups, hard_from_dislikes, batch_size, seed)


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for name, value in a.as_dict().items():
      np.testing.assert_array_equal(value, b.as_dict()[name], err_msg=name)


def positive_sets(train):
  liked = collections.defaultdict(set)
  for u, i, label in zip(train.users, train.items, train.labels):
    if label > 0:
      liked[int(u)].add(int(i))
  return liked


def test_deterministic_per_seed_and_epoch(train):
  first = list(make_sampler(train).epoch(3))
  assert_batches_equal(first, list(make_sampler(train).epoch(3)))
  other_epoch = list(make_sampler(train).epoch(4))
  other_seed = list(make_sampler(train, seed=1).epoch(3))
  assert not np.array_equal(first[0].users, other_epoch[0].users)
  assert not np.array_equal(first[0].users, other_seed[0].users)


@pytest.mark.parametrize("start_step", [1, 3])
def test_resume_is_the_tail_of_the_epoch(train, start_step):
  whole = list(make_sampler(train, hard_from_dislikes=True).epoch(2))
  assert len(whole) > start_step
  # A fresh sampler (as after a restart) resumed mid-epoch sees the same remaining batches.
  tail = list(make_sampler(train, hard_from_dislikes=True).epoch(2, start_step=start_step))
  assert_batches_equal(tail, whole[start_step:])


def test_every_positive_once_per_epoch_with_padding(train):
  sampler = make_sampler(train, batch_size=32)
  batches = list(sampler.epoch(0))
  num_positives = int((train.labels > 0).sum())
  assert num_positives % 32  # The last batch is padded.
  assert sampler.num_batches == len(batches) == -(-num_positives // 32)
  seen = collections.Counter()
  for batch in batches:
    assert batch.users.shape == (32,) and batch.neg_items.shape == (32, 2)
    assert set(np.unique(batch.row_weights)) <= {0.0, 1.0}
    real = batch.row_weights > 0
    seen.update(zip(batch.users[real].tolist(), batch.pos_items[real].tolist()))
  positives = train.positives
  assert seen == collections.Counter(zip(positives.users.tolist(), positives.items.tolist()))
  for batch in batches[:-1]:
    assert batch.row_weights.sum() == 32
  last = batches[-1]
  padding = num_positives - 32 * (len(batches) - 1)
  np.testing.assert_array_equal(last.row_weights, [1.0] * padding + [0.0] * (32 - padding))
  assert not last.user_first[padding:].any() and not last.item_first[padding:].any()


def test_first_occurrence_flags(train):
  for batch in make_sampler(train, batch_size=48).epoch(1):
    seen_users, seen_items = set(), set()
    for row in range(batch.users.shape[0]):
      real = batch.row_weights[row] > 0
      user, item = int(batch.users[row]), int(batch.pos_items[row])
      assert batch.user_first[row] == float(real and user not in seen_users)
      assert batch.item_first[row] == float(real and item not in seen_items)
      if real:
        seen_users.add(user)
        seen_items.add(item)


@pytest.mark.parametrize("use_groups", [False, True])
def test_negatives_outside_train_positives(train, use_groups):
  liked = positive_sets(train)
  sampler = make_sampler(train, use_groups=use_groups)
  for epoch in range(3):
    for batch in sampler.epoch(epoch):
      assert batch.neg_items.shape[1] == (2 if use_groups else 1)
      assert batch.neg_items.min() >= 0 and batch.neg_items.max() < NUM_ITEMS
      for user, negatives in zip(batch.users, batch.neg_items):
        assert not liked[int(user)] & set(negatives.tolist())


def test_easy_other_group_hard_same_group(train):
  sampler = make_sampler(train)
  for epoch in range(3):
    for batch in sampler.epoch(epoch):
      groups = ITEM_GROUPS[batch.pos_items]
      assert np.all(ITEM_GROUPS[batch.neg_items[:, 0]] != groups)
      assert np.all(ITEM_GROUPS[batch.neg_items[:, 1]] == groups)
      assert sampler.batch_fallbacks == {"easy": 0, "hard": 0}
  # Negatives are spread over many items, not a fixed few.
  assert np.unique(np.concatenate([b.neg_items.ravel() for b in sampler.epoch(0)])).size > 40


def test_hard_negative_falls_back_outside_positives_when_group_is_all_liked():
  """User 0 liked all of group 1: its hard negatives cannot be in group 1 and not liked."""
  group_one = np.flatnonzero(ITEM_GROUPS == 1)
  train = synthetic.interactions(np.r_[np.zeros(group_one.size), [1, 1]],
                                 np.r_[group_one, [0, 5]], np.ones(group_one.size + 2))
  sampler = make_sampler(train, batch_size=8)
  for batch in sampler.epoch(0):
    for user, pos, (easy, hard) in zip(batch.users, batch.pos_items, batch.neg_items):
      if user == 0:
        assert easy not in group_one and hard not in group_one
    # Exactly the rows whose hard negative left the positive's group are counted.
    outside = ITEM_GROUPS[batch.neg_items[:, 1]] != ITEM_GROUPS[batch.pos_items]
    assert sampler.batch_fallbacks == {"easy": 0, "hard": int(outside.sum())}
    assert not outside[batch.users == 1].any()
    assert outside[(batch.users == 0) & (batch.row_weights > 0)].all()


def test_hard_negatives_from_dislikes(train):
  train = train.select(~((train.labels < 0) & (train.users < 5)))  # Users 0-4: no dislikes.
  dislikes = collections.defaultdict(set)
  for u, i, label in zip(train.users, train.items, train.labels):
    if label < 0:
      dislikes[int(u)].add(int(i))
  assert len(dislikes) > 10
  sampler = make_sampler(train, hard_from_dislikes=True)
  drawn = collections.defaultdict(set)
  for epoch in range(4):
    for batch in sampler.epoch(epoch):
      real = batch.row_weights > 0
      for user, pos, hard in zip(batch.users[real], batch.pos_items[real],
                                 batch.neg_items[real, 1]):
        user = int(user)
        if dislikes[user]:
          assert int(hard) in dislikes[user]
          drawn[user].add(int(hard))
        else:
          assert ITEM_GROUPS[hard] == ITEM_GROUPS[pos]
  # Users with several dislikes get different ones, not always the first.
  assert any(len(drawn[u]) > 1 for u in drawn)


def test_requires_positives():
  train = synthetic.interactions([0, 1], [0, 1], [-1, -1])
  with pytest.raises(ValueError, match="positive"):
    make_sampler(train)


def test_prefetch_yields_the_same_batches_and_raises_the_drawing_error():
  dataset = synthetic.random_dataset()
  sampler = sampler_lib.BatchSampler(
      dataset.train, dataset.num_users, dataset.num_items,
      np.arange(dataset.num_items) % synthetic.NUM_ITEM_GROUPS, True, False, 16, seed=3)
  direct = list(sampler.epoch(1))
  prefetched = list(sampler_lib.prefetch(sampler.epoch(1), size=2))
  assert len(prefetched) == len(direct) == sampler.num_batches
  for a, b in zip(direct, prefetched):
    assert a.fallbacks == b.fallbacks
    for name, value in a.as_dict().items():
      np.testing.assert_array_equal(value, b.as_dict()[name], err_msg=name)
  first = next(iter(sampler_lib.prefetch(sampler.epoch(1), size=1)))  # Stopped early: no hang.
  np.testing.assert_array_equal(first.users, direct[0].users)

  def failing():
    yield direct[0]
    raise ValueError("bad batch")
  with pytest.raises(ValueError, match="bad batch"):
    list(sampler_lib.prefetch(failing()))
