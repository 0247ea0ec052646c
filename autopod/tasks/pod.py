"""pod tasks."""
