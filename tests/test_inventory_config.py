"""The settings files beside the inventory: AUTOPOD_HOME/config.yaml and ~/.runpod/config.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopod.core import config
from autopod.core.errors import AuthError, ConfigError


def runpod_config(content: bytes | None = None) -> Path:
    path = Path.home() / ".runpod" / "config.toml"
    path.parent.mkdir(exist_ok=True)
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, msg", [
    (b"\xff\xfe\x00", "the RunPod config is not UTF-8 text"),
    (b"[default]\napi_key = 123\n", "[default] api_key in the RunPod config must be a string in quotes, got a number"),
    (b"[default]\napi_key = [\"rpa_x\"]\n", "[default] api_key in the RunPod config must be a string in quotes, got a"),
    (b"default = \"rpa_x\"\n", "'default' in the RunPod config must be a table ([default])"),
    (b"apiKey = true\n", "apiKey in the RunPod config must be a string in quotes, got true/false"),
    (b"[default]\napi_key = \"\"\n", "[default] api_key in the RunPod config must be the key alone"),
    (b"[default]\napi_key = \"rpa_SECRET\\n\"\n", "[default] api_key in the RunPod config must be the key alone"),
    (b"[default]\napi_key = \"rpa_x\n", "cannot read the RunPod config: "),
])
def test_bad_runpod_config_is_a_config_error_naming_the_file(content, msg):
    path = runpod_config(content)
    with pytest.raises(ConfigError) as e:
        config.api_credentials()
    assert str(e.value).startswith(f"{path}: ") and msg in str(e.value) and "\n" not in str(e.value)
    assert "SECRET" not in str(e.value)


def test_runpod_config_that_is_a_folder_is_a_config_error():
    path = runpod_config()
    path.mkdir()
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read the RunPod config: it is a folder$"):
        config.api_credentials()


def test_runpod_config_keys_still_read():
    runpod_config(b"apiKey = \"rpa_OLDSTYLE\"\n")
    assert config.api_credentials().api_key == "rpa_OLDSTYLE"
    runpod_config(b"[default]\napi_key = \"rpa_NEW\"\n")
    assert config.api_credentials().api_key == "rpa_NEW"
    runpod_config(b"[other]\napi_key = \"rpa_NEW\"\n")
    with pytest.raises(AuthError, match="no RunPod API key"):
        config.api_credentials()


def test_user_config_uses_the_strict_loader(autopod_home):
    autopod_home.mkdir(parents=True)
    path = autopod_home / "config.yaml"
    path.write_text("gpus: [RTX 4090]\ngpus: [RTX 3090]\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2: duplicate key 'gpus' in top level \(first at line 1\)$"):
        config.user_config()
    path.write_text("volume_id: ''\n")
    with pytest.raises(ConfigError, match=r"config.yaml:1: 'volume_id' in top level must not be empty; leave the key"):
        config.user_config()
    path.write_text("defaults: {disk_gb: 5}\n")  # config.yaml is flat: the inventory's sections are unknown here
    with pytest.raises(ConfigError, match=r"config.yaml:1: unknown key 'defaults' in top level"):
        config.user_config()
    path.write_text("tunnel_backend: openssh\ngpu_count: 2\n# comment\n")
    assert config.user_config() == {"tunnel_backend": "openssh", "gpu_count": 2}


def test_user_config_that_cannot_be_read(autopod_home):
    (autopod_home / "config.yaml").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"config.yaml: cannot read the settings: it is a folder$"):
        config.user_config()
