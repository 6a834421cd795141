"""Shared fixtures: the real data in ../shared/data (skipped when absent), loaded once."""

import os

import pytest

from lagcl_jax.config import Config
from lagcl_jax.data import load_dataset

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                            "data"))


def _shared(name: str) -> str:
  path = os.path.join(SHARED_DATA, name)
  if not os.path.isdir(path):
    pytest.skip(f"real data not found at {path}")
  return path


@pytest.fixture(scope="session")
def ml100k_dir() -> str:
  """../shared/data/ml-100k (GroupLens layout)."""
  return _shared("ml-100k")


@pytest.fixture(scope="session")
def xwines_dir() -> str:
  """../shared/data/x-wines (X-Wines CSV files, including the authors' tiny test version)."""
  return _shared("x-wines")


@pytest.fixture(scope="session")
def ml1m_dir() -> str:
  """../shared/data/ml-1m (the paper's split, group files and metadata)."""
  return _shared("ml-1m")


@pytest.fixture(scope="session")
def ml1m_config(ml1m_dir) -> Config:
  return Config(dataset="lagcl", train_file=os.path.join(ml1m_dir, "train.txt"),
                test_file=os.path.join(ml1m_dir, "test.txt"), metadata_dir=ml1m_dir)


@pytest.fixture(scope="session")
def ml1m(ml1m_config):
  """The paper's ML-1M split with metadata, loaded once per session."""
  return load_dataset(ml1m_config)
