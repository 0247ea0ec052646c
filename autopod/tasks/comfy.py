"""comfy tasks."""
