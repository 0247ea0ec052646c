"""tunnel tasks."""
