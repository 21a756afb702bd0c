"""Objects: training targets from instance labels, post-processing back to instances, tuning."""
