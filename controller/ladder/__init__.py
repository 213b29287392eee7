"""The rungs' runners: the dataset gate sends a Langfuse dataset through the candidate
and the baseline, records each arm as an experiment and compares their scores in pairs."""
