"""The inference worker: queue in, results on disk and in the delivery outbox out."""
