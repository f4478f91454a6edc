"""Loading, validation, vocabularies, synthetic data and time folds."""
