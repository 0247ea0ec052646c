"""The offline simulator: its control (``control``: sim.start/stop/status), and local stand-ins that
answer like RunPod and ComfyUI, with simulated pods that are real local processes."""
