"""An offline stand-in for RunPod and ComfyUI: local servers that answer like the real services."""
