"""The engine: `tick` (the job state machine), submission and its crash recovery, the shards a job needs, budget
and queue admission, the Batch API client, the workspace lock, collect, and the comparison with the provider."""
