"""ComfyUI's model folders, as ComfyUI 0.3.64 defines them (``folder_paths.py``, the loader nodes).

Plain data, no imports: the simulator's ComfyUI lists its model folders from it, and ``comfy.run``
knows from it which input of a core loader names a file in which folder.
"""

from __future__ import annotations

# ComfyUI lists these extensions in a model folder (supported_pt_extensions); a .part file is none of them.
PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

# folder key -> its default paths under models/, in ComfyUI's order (the first is where downloads go)
FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "custom_nodes": (),  # <base>/custom_nodes, not under models/
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}
# Names older workflows and tools use; ComfyUI maps them (map_legacy), /models/{folder} does not.
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}

# worker-comfyui 5.8.5 (RunPod Serverless) reads a network volume only at /runpod-volume/models/<name> for these
# names (its extra_model_paths.yaml): ComfyUI folder key -> that name. The pod program (puller) keeps a copy.
WORKER_FOLDERS: dict[str, str] = {
    "checkpoints": "checkpoints", "text_encoders": "clip", "clip_vision": "clip_vision", "configs": "configs",
    "controlnet": "controlnet", "embeddings": "embeddings", "loras": "loras", "upscale_models": "upscale_models",
    "vae": "vae", "diffusion_models": "unet",
}

# (loader class, input) -> the folder whose files that input lists
LOADER_INPUTS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
    ("AudioEncoderLoader", "audio_encoder_name"): "audio_encoders",
}


def canonical(folder: str) -> str:
    """ComfyUI's current name for a folder (``clip`` -> ``text_encoders``)."""
    return LEGACY.get(folder, folder)


def listed_by_comfyui(name: str) -> bool:
    """Whether ComfyUI lists a file of this name in a model folder (its extension filter)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in PT_EXTENSIONS
