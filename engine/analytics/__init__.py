"""Campaign analytics: exact counts per rule, version, variant and step (observe.py, what an
Output counts; tally.py, the counts not yet checkpointed), reports built from them
(report.py) and experiment statistics (stats.py). Storage: engine/embedded/storage/analytics.py."""
