"""The learning-to-rank re-ranker the pipeline serves with: candidate types, features, the LightGBM model
and the served-feature log."""
