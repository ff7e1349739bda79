"""Evaluation: features read from the store, the SVM protocols run over folds, results, per-fold picks, the leaderboard."""
