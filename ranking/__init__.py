"""Learning-to-rank re-ranker and offline ranking evaluation."""
