"""Judging a model: metrics, statistics, efficiency (Table 6), and prediction on image files."""
