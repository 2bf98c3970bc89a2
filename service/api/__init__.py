"""REST API: upload, study state, results, health and metrics."""
