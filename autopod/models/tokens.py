"""The Hugging Face and Civitai tokens: from the environment, else ``AUTOPOD_HOME/config.yaml``.

``HF_TOKEN`` (else ``HUGGING_FACE_HUB_TOKEN``, the older name huggingface_hub still reads) and
``CIVITAI_API_TOKEN`` win over ``hf_token`` and ``civitai_api_token`` in config.yaml; the inventory
never holds them. A token reaches a pod only on SSH's standard input, and is registered with the
log's redaction, so no log line, error or JSON document shows it.
"""

from __future__ import annotations

import os
from typing import Any

from ..core import config as _config
from ..core.errors import ConfigError
from ..core.log import register_secret

SOURCES = {"hf": (("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "hf_token"),
           "civitai": (("CIVITAI_API_TOKEN",), "civitai_api_token")}


def _check(value: str, where: str) -> str:
    v = value.strip()
    if not v or any(c.isspace() or not c.isprintable() for c in v):
        raise ConfigError(f"{where} must be the token alone: not empty, no spaces or control characters")
    return v


def tokens(config: dict[str, Any] | None = None) -> dict[str, str]:
    """{"hf": ..., "civitai": ...} for the tokens that are set (none set: {})."""
    out: dict[str, str] = {}
    cfg = None
    for kind, (env_names, key) in SOURCES.items():
        value = None
        for env in env_names:
            if os.environ.get(env):
                value = _check(os.environ[env], env)
                break
        if value is None:
            if cfg is None:
                cfg = config if config is not None else _config.user_config()
            if cfg.get(key):
                value = _check(str(cfg[key]), f"{key} in config.yaml")
        if value:
            register_secret(value)
            out[kind] = value
    return out
