"""lagcl-jax: a JAX reimplementation of LAGCL4Rec (Zheng et al., Findings of EMNLP 2025)."""
