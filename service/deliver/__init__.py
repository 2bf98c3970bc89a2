"""⑥ deliver: C-STORE of results to the configured PACS destinations, with retries."""
