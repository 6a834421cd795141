"""LAGCL4Rec's LLM side: a batched, cached prompt driver and the profile, augmentation,
grouping and reranking stages that hand their results to training and evaluation as files."""
