"""Inventory and config validation: clear errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopod.core import config
from autopod.core.errors import ConfigError
from autopod.core.inventory import load_inventory

GOOD = """\
defaults:
  gpus: [RTX 4090, RTX A6000]
  cloud_type: SECURE
  ssh_key: ~/.ssh/id_ed25519
pods:
  comfy:
    volume_id: abcdefghij
    env:
      CIVITAI_TOKEN_FILE: /workspace/token
    comfy_address: 127.0.0.1:3000
hosts:
  homebox:
    host: 127.0.0.1
    port: 2222
    user: me
"""


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_defaults_pods_and_hosts(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.defaults["gpus"] == ["RTX 4090", "RTX A6000"]
    assert inv.pods["comfy"]["volume_id"] == "abcdefghij"
    host = inv.hosts["homebox"]
    assert (host.host, host.port, host.user, host.key) == ("127.0.0.1", 2222, "me", None)


def test_folder_merges_every_yaml_file(tmp_path):
    d = tmp_path / "inventory"
    d.mkdir()
    write(d, "defaults:\n  disk_gb: 80\n", "a.yml")
    write(d, "pods:\n  x:\n    gpus: [RTX 3090]\n", "b.yaml")
    write(d, "# only comments\n", "example.yml")
    inv = load_inventory(d)
    assert inv.defaults == {"disk_gb": 80} and "x" in inv.pods and len(inv.sources) == 3


def test_unknown_key_names_file_and_line(tmp_path):
    p = write(tmp_path, "pods:\n  comfy:\n    gpus: [RTX 4090]\n    volume: abc\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    assert f"{p}:4" in str(e.value) and "unknown key 'volume'" in str(e.value)


def test_wrong_type_names_line(tmp_path):
    p = write(tmp_path, "defaults:\n  disk_gb: lots\n")
    msg = r"inv.yml:2: 'disk_gb' in defaults must be a whole number like 2, got 'lots'$"
    with pytest.raises(ConfigError, match=msg):
        load_inventory(p)
    p = write(tmp_path, "defaults:\n  image: [a, b]\n")
    with pytest.raises(ConfigError, match=r"inv.yml:2: 'image' in defaults must be a string, got a list$"):
        load_inventory(p)


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "defaults:\n  gpus: [RTX 4090\n  disk_gb: 3\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    assert str(p) in str(e.value) and "invalid YAML" in str(e.value)


def test_host_needs_host(tmp_path):
    with pytest.raises(ConfigError, match="needs 'host'"):
        load_inventory(write(tmp_path, "hosts:\n  box:\n    port: 22\n"))


def test_explicit_missing_inventory_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(tmp_path / "missing.yml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_inventory()


def test_default_location_may_be_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPOD_INVENTORY")
    monkeypatch.chdir(tmp_path)
    assert load_inventory().pods == {}


def test_resolution_order_flag_spec_defaults_config_builtin(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    spec = inv.pods["comfy"]
    user_cfg = {"disk_gb": 70, "gpus": ["H100 SXM"]}
    assert config.resolve("gpus", ["RTX 3090"], inventory=inv, pod_spec=spec, config=user_cfg) == ["RTX 3090"]
    assert config.resolve("gpus", [], inventory=inv, pod_spec={"gpus": ["A100 PCIe"]}, config=user_cfg) == ["A100 PCIe"]
    assert config.resolve("gpus", None, inventory=inv, pod_spec=spec, config=user_cfg) == ["RTX 4090", "RTX A6000"]
    assert config.resolve("disk_gb", None, inventory=inv, pod_spec=spec, config=user_cfg) == 70
    assert config.resolve("image", None, inventory=inv, pod_spec=spec, config=user_cfg) == "runpod/comfyui:latest"


def test_user_config_is_validated(autopod_home):
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "config.yaml").write_text("tunnel_backend: openssh\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2: unknown key 'bogus'"):
        config.user_config()


def test_api_key_sources(tmp_path, monkeypatch):
    from autopod.core.errors import AuthError

    with pytest.raises(AuthError, match="RUNPOD_API_KEY"):
        config.api_credentials()
    rp = Path.home() / ".runpod"
    rp.mkdir()
    (rp / "config.toml").write_text('[default]\napi_key = "rpa_FROMFILE"\n')
    assert config.api_credentials().api_key == "rpa_FROMFILE"
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_FROMENV")
    creds = config.api_credentials()
    assert creds.api_key == "rpa_FROMENV" and "rpa_FROMENV" not in repr(creds)


def test_ssh_key_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="ssh-keygen"):
        config.ssh_key_path()
    with pytest.raises(ConfigError, match="does not exist"):
        config.ssh_key_path(str(tmp_path / "nokey"))
