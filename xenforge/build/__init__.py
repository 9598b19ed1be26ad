"""Running a plan: the executor (scheduling, late inputs, commit)."""
