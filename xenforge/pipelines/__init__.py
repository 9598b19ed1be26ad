"""CI pipelines for existing engines (GitLab CI, GitHub Actions) that shard a build."""
