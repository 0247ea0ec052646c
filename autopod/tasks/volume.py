"""volume tasks."""
