"""The issue-10 fault suite: `python -m loadtest.faults` (see loadtest/README.md)."""
