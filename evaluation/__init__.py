"""Running the search pipeline offline: known-item protocols, judgments, ranx evaluation and re-ranker
training from them (`marketsearch train-ranker`, `marketsearch evaluate`)."""
