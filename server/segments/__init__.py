"""Suggested segments (`nbo segments suggest`): offline clustering of the loaded customers, each
cluster described as a rule of the catalog's rule language. Never imported by the hot path.

load.py reads the feature vectors from Redis, encode.py turns them into a numeric matrix,
cluster.py groups them, describe.py fits the shallow tree whose paths become rules, profile.py
says what sets each segment apart, log_stats.py measures each rule on the decision log and
suggest.py ties them together; block.py writes the catalog `segments:` block.
"""
