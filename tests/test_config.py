"""Tests for lagcl_jax.config.validate: every bad value fails naming its flag."""

import pytest

from lagcl_jax import config as config_lib


def test_defaults_and_each_model_are_valid():
  config_lib.validate(config_lib.Config())
  for model in config_lib.MODELS:
    config_lib.validate(config_lib.Config(model=model))


@pytest.mark.parametrize("changes,flag", [
    (dict(model="bprmf"), "model"),
    (dict(readout="layers_0_to_2"), "readout"),
    (dict(init="uniform"), "init"),
    (dict(reg_form="final"), "reg_form"),
    (dict(min_epochs=-1), "min_epochs"),
    (dict(min_epochs=21, num_epochs=20), "min_epochs"),
    (dict(cl_layer=3, num_layers=2), "cl_layer"),
    (dict(cl_layer=0), "cl_layer"),
    (dict(tau_hard_scale=0.0), "tau_hard_scale"),
    (dict(eps=-0.1), "eps"),
    (dict(cl_warmup_steps=-1), "cl_warmup_steps"),
    (dict(top_k=(10, 0)), "top_k"),
    (dict(select_metric="valid/ndcg@40"), "select_metric"),
    (dict(groups="metadata", group_losses="contrastive"), "group_losses"),
    (dict(shuffle_groups=True), "shuffle_groups"),
])
def test_bad_values_name_their_flag(changes, flag):
  with pytest.raises(ValueError, match=f"--{flag}="):
    config_lib.validate(config_lib.Config(**changes))


def test_cl_layer_only_checked_where_xsimgcl_contrasts():
  """l* is XSimGCL's: SimGCL and LightGCN ignore it, as does XSimGCL without contrast."""
  for changes in (dict(model="simgcl"), dict(model="lightgcn"), dict(cl_weight=0.0)):
    config_lib.validate(config_lib.Config(cl_layer=5, **changes))


def test_min_epochs_up_to_num_epochs_is_valid():
  config_lib.validate(config_lib.Config(min_epochs=20, num_epochs=20, top_k=(10, 20, 40)))


def test_contrastive_only_for_simgcl_and_xsimgcl():
  assert config_lib.Config(model="simgcl").contrastive
  assert config_lib.Config(model="xsimgcl").contrastive
  assert not config_lib.Config(model="xsimgcl", cl_weight=0.0).contrastive
  assert not config_lib.Config(model="lightgcn").contrastive
  assert not config_lib.Config(model="mostpop").contrastive
