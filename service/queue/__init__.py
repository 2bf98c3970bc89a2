"""③ queue: Redis Streams jobs, consumer group, dead letters, and the study state."""
