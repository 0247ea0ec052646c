"""RunPod: the API adapter (the only module that imports the ``runpod`` SDK, lazily), pod settings,
the pod record and registry, lifecycle and waits, access (info, SSH), network volumes and GPUs."""
