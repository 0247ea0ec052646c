"""sim tasks."""
