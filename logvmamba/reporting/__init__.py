"""Tables, statistics and figures from the workflow's results."""
