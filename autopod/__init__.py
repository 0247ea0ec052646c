"""autopod: RunPod + ComfyUI chores from a terminal and from shell scripts."""

__version__ = "0.1.0"
