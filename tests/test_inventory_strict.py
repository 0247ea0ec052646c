"""Hostile and mistaken inventories: every one ends as one ConfigError line naming the file and the line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autopod.core import config
from autopod.core.errors import ConfigError
from autopod.core.inventory import load_inventory, load_yaml_document, load_yaml_mapping


def write(folder: Path, text: str | bytes, name: str = "inv.yml") -> Path:
    p = folder / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_inventory(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" under a pod's env: each level lists the previous one ``width`` times, so the
    last alias stands for width**levels strings (9**9: 387 million) in 12 lines of YAML."""
    lines = [f"      L0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"      L{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "pods:\n  flux:\n    env:\n" + "\n".join(lines) + f"\n      X: *l{levels - 1}\n"


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_flavour(request, monkeypatch):
    """Run a test with libyaml's parser and with PyYAML's own (used where libyaml is not built in)."""
    import yaml

    if request.param == "pure-python":
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML is built without libyaml")
    return request.param


# -- reading the file ---------------------------------------------------------------------------------
def test_binary_inventory_is_refused_naming_the_file(tmp_path):
    p = write(tmp_path, b"\xff\xfe\x00")
    assert f"{p}:1: the inventory is not UTF-8 text (byte 0xff)" in error(p)
    p = write(tmp_path, "pods:\n  a:\n    image: caf\xe9\n".encode("latin-1"))
    assert f"{p}:3: " in error(p)


def test_binary_user_config_is_refused_naming_the_file(autopod_home):
    autopod_home.mkdir(parents=True)
    (autopod_home / "config.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"config.yaml:1: .*not UTF-8"):
        config.user_config()


def test_nul_and_control_bytes_are_invalid_yaml_with_a_line(tmp_path, yaml_flavour):
    p = write(tmp_path, b"defaults:\n  image: a\x00b\n")
    assert f"{p}:2: invalid YAML" in error(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_folder_and_file_real_permissions(tmp_path):
    d = tmp_path / "inv"
    d.mkdir()
    f = write(d, "pods: {}\n")
    f.chmod(0)
    try:
        assert "cannot read the inventory: Permission denied" in error(d)
    finally:
        f.chmod(0o600)
    d.chmod(0)
    try:
        assert "cannot read the inventory folder: Permission denied" in error(d)
    finally:
        d.chmod(0o700)


def test_unreadable_folder_is_a_clear_error(tmp_path, monkeypatch):
    d = tmp_path / "inv"
    d.mkdir()

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(d))
    with pytest.raises(ConfigError, match=rf"^{d}: cannot read the inventory folder: Permission denied$"):
        load_inventory()


def test_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    p = write(tmp_path, "pods: {}\n")

    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ConfigError, match=rf"^{p}: cannot read the inventory: Permission denied$"):
        load_inventory(p)


def test_a_folder_named_like_a_yaml_file_or_a_fifo_is_refused(tmp_path):
    d = tmp_path / "inv"
    (d / "sub.yml").mkdir(parents=True)
    assert "cannot read the inventory" in error(d)
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    assert "must be a YAML file or a folder" in error(fifo)


# -- aliases, anchors, merge keys ---------------------------------------------------------------------
def test_alias_bomb_is_refused_without_expanding_it(tmp_path, yaml_flavour):
    p = write(tmp_path, bomb())
    assert error(p) == f"{p}:5: YAML aliases (*l0) are not allowed"


def test_alias_bomb_in_user_config_is_refused(autopod_home):
    autopod_home.mkdir(parents=True)
    (autopod_home / "config.yaml").write_text("env:\n  X: *b\nx: &a [1, 1]\ny: &b [*a, *a]\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2: YAML aliases \(\*b\) are not allowed$"):
        config.user_config()


@pytest.mark.parametrize("text, msg", [
    ("defaults:\n  gpus: &g [RTX 4090]\n", ":2: YAML anchors (&g) are not allowed"),
    ("defaults: &d\n  disk_gb: 5\npods:\n  a:\n    <<: {disk_gb: 6}\n", ":1: YAML anchors (&d) are not allowed"),
    ("pods:\n  a:\n    <<: {disk_gb: 6}\n", ":3: YAML merge keys (<<) are not allowed"),
    ("pods:\n  ? [a, b]\n  : {}\n", ":2: keys in pods must be names or numbers, not a list"),
])
def test_anchors_merge_keys_and_complex_keys_are_refused(tmp_path, yaml_flavour, text, msg):
    p = write(tmp_path, text)
    assert error(p) == f"{p}{msg}"


def test_ampersands_and_stars_in_values_are_fine(tmp_path):
    p = write(tmp_path, "defaults:\n  comfy_url: http://127.0.0.1:8188/?a=1&b=2\n  env: {GLOB: '*.safetensors'}\n")
    assert load_inventory(p).defaults["env"] == {"GLOB": "*.safetensors"}


def test_load_yaml_document_is_strict_and_generic(tmp_path):
    p = write(tmp_path, "seed: 3\nsettings: {latency_s: 0.5}\ngpu_types: [a, b]\n", "world.yml")
    assert load_yaml_document(p, "simulator world") == {"seed": 3, "settings": {"latency_s": 0.5},
                                                         "gpu_types": ["a", "b"]}
    assert load_yaml_document(write(tmp_path, "# nothing\n", "empty.yml"), "simulator world") is None
    with pytest.raises(ConfigError, match=r"world.yml:1: YAML aliases \(\*a\) are not allowed$"):
        load_yaml_document(write(tmp_path, "x: *a\ny: &a 1\n", "world.yml"), "simulator world")
    with pytest.raises(ConfigError, match=r"world.yml:2: duplicate key 'seed' in top level \(first at line 1\)$"):
        load_yaml_document(write(tmp_path, "seed: 1\nseed: 2\n", "world.yml"), "simulator world")
    with pytest.raises(ConfigError, match=r"^\S+world.yml: cannot read the simulator world: "):
        load_yaml_document(tmp_path / "nope" / "world.yml", "simulator world")
    with pytest.raises(ConfigError, match=r"world.yml:1: invalid YAML: could not determine a constructor"):
        load_yaml_document(write(tmp_path, "x: !!python/name:os.system\n", "world.yml"), "simulator world")
    with pytest.raises(ConfigError, match=r"world.yml: invalid value in the simulator world: month"):
        load_yaml_document(write(tmp_path, "when: 2024-13-45\n", "world.yml"), "simulator world")


def test_deep_nesting_is_an_error_not_a_crash(tmp_path, yaml_flavour):
    p = write(tmp_path, "defaults:\n  env: " + "[" * 5000 + "]" * 5000 + "\n")
    msg = error(p)
    assert msg == f"{p}: the inventory is nested too deeply" if yaml_flavour == "pure-python" else \
        msg.startswith(f"{p}:2: invalid YAML: exceeded maximum nesting depth")


# -- duplicates ---------------------------------------------------------------------------------------
def test_int_and_string_names_are_one_name_across_files(tmp_path):
    d = tmp_path / "inv"
    d.mkdir()
    a = write(d, "pods:\n  1:\n    disk_gb: 5\n", "a.yml")
    b = write(d, "# the same pod\npods:\n  \"1\":\n    disk_gb: 6\n", "b.yml")
    assert error(d) == f"{b}:3: pod spec '1' is defined twice in the inventory (first at {a}:2)"
    write(d, "hosts:\n  7: {host: a.example}\n", "a.yml")
    write(d, "hosts:\n  '7': {host: b.example}\n", "b.yml")
    assert error(d) == f"{b}:2: host '7' is defined twice in the inventory (first at {a}:2)"


def test_names_are_strings_as_written(tmp_path):
    inv = load_inventory(write(tmp_path, "pods:\n  007: {}\n  1: {disk_gb: 5}\n  1.50: {}\nhosts:\n  2: {host: h}\n"))
    assert list(inv.pods) == ["007", "1", "1.50"] and inv.pods["1"] == {"disk_gb": 5}
    assert inv.hosts["2"].name == "2"


@pytest.mark.parametrize("text, msg", [
    ("pods:\n  a: {}\n  a: {}\n", ":3: duplicate key 'a' in pods (first at line 2)"),
    ("pods: {a: {}, a: {}}\n", ":1: duplicate key 'a' in pods (first at line 1)"),
    ("defaults:\n  disk_gb: 5\n  disk_gb: 6\n", ":3: duplicate key 'disk_gb' in defaults (first at line 2)"),
    ("pods:\n  a:\n    env: {X: a, X: b}\n", ":3: duplicate key 'X' in pods.a.env (first at line 3)"),
    ("pods:\n  1: {}\n  \"1\": {}\n", ":3: pod spec '1' is defined twice (first at line 2)"),
    ("pods:\n  1: {}\n  01: {}\n", ":3: duplicate key '01' in pods (first at line 2)"),
    ("hosts:\n  b: {host: x}\n  b: {host: y}\n", ":3: duplicate key 'b' in hosts (first at line 2)"),
])
def test_duplicate_keys_in_one_file(tmp_path, yaml_flavour, text, msg):
    p = write(tmp_path, text)
    assert error(p) == f"{p}{msg}"


# -- values -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1_0", "+2", "0x10", "010", "0o10", "1:30", "2.0", "'2'", "true", "[2]"])
def test_whole_numbers_are_plain_digits(tmp_path, value):
    p = write(tmp_path, f"pods:\n  flux:\n    gpus: [RTX 4090]\n    gpu_count: {value}\n")
    msg = error(p)
    assert msg.startswith(f"{p}:4: 'gpu_count' in pods.flux must be a whole number like 2"), msg
    shown = {"'2'": "'2'", "[2]": "a list"}.get(value, repr(value))
    assert msg.endswith(f", got {shown}"), msg


@pytest.mark.parametrize("text, msg", [
    ("defaults:\n  gpu_count: 17\n", "'gpu_count' in defaults must be between 1 and 16, got 17"),
    ("defaults:\n  gpu_count: 0\n", "'gpu_count' in defaults must be between 1 and 16, got 0"),
    ("defaults:\n  disk_gb: 4001\n", "'disk_gb' in defaults must be between 1 and 4000, got 4001"),
    ("defaults:\n  timeout: 604801\n", "'timeout' in defaults must be between 1 and 604800, got 604801"),
    ("defaults:\n  timeout: " + "9" * 5000 + "\n", "'timeout' in defaults must be between 1 and 604800, got 9999"),
    ("hosts:\n  h:\n    host: h\n    port: 65536\n", "'port' in hosts.h must be between 1 and 65535, got 65536"),
])
def test_whole_number_ranges(tmp_path, text, msg):
    p = write(tmp_path, text)
    got = error(p)
    assert msg in got and len(got) < 200, got


BAD_VALUES = [
    ("ports", "[8188/http, 53/udp]", "item 2 of 'ports' in @ must be PORT/http or PORT/tcp with PORT 1-65535"),
    ("ports", "[70000/tcp]", "item 1 of 'ports' in @ must be PORT/http"),
    ("ports", "[0/http]", "item 1 of 'ports' in @ must be PORT/http"),
    ("ports", "[8188]", "item 1 of 'ports' in @ must be a string, got '8188' (YAML reads it as a number"),
    ("ports", "[]", "'ports' in @ must not be empty; leave the key out to use the default"),
    ("ports", "8188/http", "'ports' in @ must be a list, e.g. [a, b], got '8188/http'"),
    ("gpus", "['']", "item 1 of 'gpus' in @ must not be empty"),
    ("gpus", "[RTX 4090, {a: 1}]", "item 2 of 'gpus' in @ must be a string, got a mapping"),
    ("cloud_type", "CHEAP", "'cloud_type' in @ must be one of SECURE, COMMUNITY, ALL, got 'CHEAP'"),
    ("tunnel_backend", "ssh", "'tunnel_backend' in @ must be one of sshtunnel, openssh, got 'ssh'"),
    ("comfy_address", "localhost", "'comfy_address' in @ must be HOST:PORT with PORT 1-65535"),
    ("comfy_address", "127.0.0.1:0", "'comfy_address' in @ must be HOST:PORT"),
    ("comfy_address", "127.0.0.1:65536", "'comfy_address' in @ must be HOST:PORT"),
    ("comfy_address", "::1:8188", "'comfy_address' in @ must be HOST:PORT"),
    ("comfy_address", "-oProxyCommand=x:22", "'comfy_address' in @ must be HOST:PORT"),
    ("comfy_url", "not a url", "'comfy_url' in @ must be an http:// or https:// URL with a host"),
    ("comfy_url", "ftp://host", "'comfy_url' in @ must be an http:// or https:// URL"),
    ("comfy_url", "http://", "'comfy_url' in @ must be an http:// or https:// URL"),
    ("comfy_url", "http://host:99999", "'comfy_url' in @ must be an http:// or https:// URL"),
    ("comfy_url", "http://host:0", "'comfy_url' in @ must be an http:// or https:// URL"),
    ("comfy_url", "http://host:port", "'comfy_url' in @ must be an http:// or https:// URL"),
    ("env", "{1X: a}", "variable name '1X' in 'env' in @ must be letters, digits and '_'"),
    ("env", "{A-B: a}", "variable name 'A-B' in 'env' in @ must be letters"),
    ("env", "{A: [1, 2]}", "'A' in 'env' in @ must be a string, number or true/false, got a list"),
    ("env", "{A: {b: 1}}", "'A' in 'env' in @ must be a string, number or true/false, got a mapping"),
    ("env", "{A: }", "'A' in 'env' in @ has no value"),
    ("env", "{A: ''}", "'A' in 'env' in @ must not be empty"),
    ("env", "{A: 010}", "'A' in 'env' in @ must be written as the pod should see it: YAML would rewrite '010'"),
    ("env", "{A: 1_000}", "YAML would rewrite '1_000'; put it in quotes"),
    ("env", "{A: yes}", "YAML would rewrite 'yes'"),
    ("env", "{A: 1.0e+3}", "YAML would rewrite '1.0e+3'"),
    ("env", "{A: .inf}", "YAML would rewrite '.inf'"),
    ("env", "{A: 2024-01-01}", "'A' in 'env' in @ must be a string, number or true/false, got '2024-01-01'"),
    ("env", "[A=1]", "'env' in @ must be a mapping of NAME: value, got a list"),
    ("volume_id", "''", "'volume_id' in @ must not be empty; leave the key out to use the default"),
    ("volume_id", "'   '", "'volume_id' in @ must not be empty"),
    ("volume_id", "", "'volume_id' in @ has no value; leave the key out to use the default"),
    ("volume_id", "12345", "'volume_id' in @ must be a string, got '12345' (YAML reads it as a number; put it"),
    ("image", "\"a\\tb\"", "'image' in @ must not contain control characters (newline, tab, escape), got 'a\\tb'"),
    ("image", "\"a\\x9bb\"", "'image' in @ must not contain control characters"),
    ("image", "\"a\\e[31m\"", "'image' in @ must not contain control characters"),
    ("datacenter", "true", "'datacenter' in @ must be a string, got 'true' (YAML reads it as true/false"),
    ("ssh_key", "''", "'ssh_key' in @ must not be empty"),
]


@pytest.mark.parametrize("key, value, msg", BAD_VALUES)
def test_bad_values_in_defaults(tmp_path, key, value, msg):
    p = write(tmp_path, f"defaults:\n  disk_gb: 5\n  {key}: {value}\n")
    got = error(p)
    assert got.startswith(f"{p}:3: ") and msg.replace("@", "defaults") in got, got


@pytest.mark.parametrize("key, value, msg", [v for v in BAD_VALUES if v[0] not in ("ssh_key", "tunnel_backend",
                                                                                   "comfy_url")])
def test_bad_values_in_pod_specs(tmp_path, key, value, msg):
    p = write(tmp_path, f"pods:\n  flux:\n    {key}: {value}\n")
    got = error(p)
    assert got.startswith(f"{p}:3: ") and msg.replace("@", "pods.flux") in got, got


@pytest.mark.parametrize("key, value, msg", [
    ("comfy_url", "not a url", "'comfy_url' in top level must be an http:// or https:// URL"),
    ("volume_id", "''", "'volume_id' in top level must not be empty"),
    ("gpu_count", "0x2", "'gpu_count' in top level must be a whole number like 2, got '0x2'"),
])
def test_bad_values_in_user_config(autopod_home, key, value, msg):
    autopod_home.mkdir(parents=True)
    (autopod_home / "config.yaml").write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError) as e:
        config.user_config()
    assert str(e.value).startswith(f"{autopod_home / 'config.yaml'}:1: ") and msg in str(e.value), str(e.value)


@pytest.mark.parametrize("field, value, msg", [
    ("host", "-oProxyCommand=x", "'host' in hosts.box must be a host name or IP address"),
    ("host", "a b", "'host' in hosts.box must be a host name or IP address"),
    ("host", "''", "'host' in hosts.box must not be empty"),
    ("user", "-oProxyCommand=evil", "'user' in hosts.box must be a user name"),
    ("user", "me@host", "'user' in hosts.box must be a user name"),
    ("user", "a" * 33, "'user' in hosts.box must be a user name"),
    ("key", "''", "'key' in hosts.box must not be empty"),
    ("port", "+22", "'port' in hosts.box must be a whole number like 2, got '+22'"),
    ("comfy_address", "127.0.0.1", "'comfy_address' in hosts.box must be HOST:PORT"),
])
def test_bad_host_fields(tmp_path, field, value, msg):
    fields = {"host": "192.168.1.20", "user": "me", field: value}
    p = write(tmp_path, "hosts:\n  box:\n" + "".join(f"    {k}: {v}\n" for k, v in fields.items()))
    got = error(p)
    line = 3 + list(fields).index(field)
    assert got.startswith(f"{p}:{line}: ") and msg in got, got


@pytest.mark.parametrize("text, msg", [
    ("pods:\n  '': {}\n", ":2: a pod spec name in pods must not be empty"),
    ("pods:\n  ~: {}\n", ":2: a pod spec name in pods is empty or null"),
    ("pods:\n  \"a\\nb\": {}\n", ":2: pod spec name 'a\\nb' must not contain control characters"),
    ("pods:\n  " + "x" * 129 + ": {}\n", ":2: pod spec name 'xxx"),
    ("hosts:\n  \"a\\x1b\": {host: h}\n", ":2: host name 'a\\x1b' must not contain control characters"),
    ("hosts:\n  box:\n", ":2: hosts.box needs 'host'"),
    ("hosts:\n  box: {port: 22}\n", ":2: hosts.box needs 'host'"),
    ("pods: [a, b]\n", ":1: pods must be a mapping of names to pod specs"),
    ("pods:\n  a: [x]\n", ":2: pods.a must be a mapping"),
    ("- a\n", ":1: top level must be a mapping"),
    ("defaults: 3\n", ":1: defaults must be a mapping"),
    ("1: {}\n", ":1: unknown key '1' in top level"),
])
def test_bad_names_and_shapes(tmp_path, text, msg):
    p = write(tmp_path, text)
    assert error(p).startswith(f"{p}{msg}")


def test_good_values_still_load(tmp_path):
    p = write(tmp_path, """\
defaults:
  cloud_type: community
  tunnel_backend: openssh
  comfy_url: https://[::1]:8443/comfy
  comfy_address: "[::1]:8188"
  ports: [8188/http, 22/tcp, 65535/tcp]
  gpu_count: 16
  disk_gb: 4000
  timeout: 604800
  env: {A: 1, B: 0, C: -3, D: 1.5, E: true, F: False, G: "010", _H: x}
pods:
  flux:
    comfy_address: comfy.internal:8188
hosts:
  box:
    host: fe80::1
    user: Ubuntu.admin-1
    port: 65535
    key: ~/.ssh/id_ed25519
""")
    inv = load_inventory(p)
    assert inv.defaults["env"] == {"A": 1, "B": 0, "C": -3, "D": 1.5, "E": True, "F": False, "G": "010", "_H": "x"}
    assert inv.defaults["gpu_count"] == 16 and inv.hosts["box"].port == 65535
    assert load_yaml_mapping(p, {"defaults": dict, "pods": dict, "hosts": dict})["pods"] == {"flux": {
        "comfy_address": "comfy.internal:8188"}}


# -- through the CLI: exit 2, one line, no traceback ----------------------------------------------------
@pytest.mark.parametrize("content", [b"\xff\xfe\x00", bomb(levels=4).encode(), b"pods:\n  flux: {gpu_count: 1_0}\n"])
def test_cli_exits_2_with_one_line(cli, tmp_path, monkeypatch, content):
    p = write(tmp_path, content)
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(p))
    r = cli("pod.create", "--name", "flux", "--dry-run", "--json")
    assert r.code == 2 and "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert [ln for ln in r.err.splitlines() if ln.startswith("error:")] == [ln for ln in r.err.splitlines() if ln]
    assert f"{p}:" in r.err and r.json["failed"] is True


def test_cli_binary_user_config_exits_2(cli, autopod_home):
    autopod_home.mkdir(parents=True)
    (autopod_home / "config.yaml").write_bytes(b"\xff\xfe\x00")
    r = cli("pod.create", "--dry-run")
    assert r.code == 2 and "config.yaml:1: " in r.err and "Traceback" not in r.err, r.err
