"""ComfyUI: the HTTP client and the comfy operations (status, info) over a tunnel."""
