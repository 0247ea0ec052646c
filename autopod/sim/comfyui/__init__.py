"""The parts of the ComfyUI stand-in that execute workflows (``autopod.sim.comfyui_standin`` is its face)."""
