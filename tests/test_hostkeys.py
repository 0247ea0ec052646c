"""Host key pinning: trust on first use, refuse a changed key, one file for paramiko and OpenSSH."""

from __future__ import annotations

import subprocess

import pytest

from autopod.core.errors import HostKeyMismatch, TunnelError
from autopod.tunnels.hostkeys import (
    forget_host,
    host_entry_name,
    known_hosts_path,
    pin_on_first_use,
    pinned_key,
    pinned_keys,
)


def test_entry_names_follow_openssh():
    assert host_entry_name("1.2.3.4", 22) == "1.2.3.4"
    assert host_entry_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_nothing_pinned_in_a_fresh_home():
    assert pinned_key("127.0.0.1", 2222) is None


def test_unreachable_host_is_a_tunnel_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(TunnelError, match="cannot reach SSH"):
            pin_on_first_use("127.0.0.1", port, timeout=2)


@pytest.mark.sshd
def test_trust_on_first_use_then_pinned(sshd):
    key = pin_on_first_use("127.0.0.1", sshd.port, timeout=5)
    assert f"{key.get_name()} {key.get_base64()}" == " ".join(sshd.host_key_pub.split()[:2])
    line = known_hosts_path().read_text().strip()
    assert line == f"[127.0.0.1]:{sshd.port} {key.get_name()} {key.get_base64()}"
    assert known_hosts_path().stat().st_mode & 0o077 == 0
    # Second contact: compared, not appended.
    assert pin_on_first_use("127.0.0.1", sshd.port, timeout=5).asbytes() == key.asbytes()
    assert len(known_hosts_path().read_text().splitlines()) == 1
    assert pinned_key("127.0.0.1", sshd.port).asbytes() == key.asbytes()


@pytest.mark.sshd
def test_changed_key_raises_and_forget_allows_repinning(sshd, tmp_path, autopod_home):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kt, b64 = (tmp_path / "k.pub").read_text().split()[:2]
    autopod_home.mkdir(exist_ok=True)
    known_hosts_path().write_text(f"# comment\n[127.0.0.1]:{sshd.port} {kt} {b64}\n")
    with pytest.raises(HostKeyMismatch, match="CHANGED") as e:
        pin_on_first_use("127.0.0.1", sshd.port, timeout=5)
    assert e.value.exit_code == 1 and "ssh-keygen -R" in str(e.value)
    assert len(pinned_keys("127.0.0.1", sshd.port)) == 1  # the pinned key is untouched
    assert forget_host("127.0.0.1", sshd.port) is True
    assert forget_host("127.0.0.1", sshd.port) is False
    assert pin_on_first_use("127.0.0.1", sshd.port, timeout=5)


@pytest.mark.sshd
def test_openssh_client_accepts_the_pinned_file_and_refuses_a_wrong_one(sshd, ssh_user_key, tmp_path, autopod_home):
    """The same known_hosts works for `ssh -o StrictHostKeyChecking=yes` (the openssh backend)."""
    pin_on_first_use("127.0.0.1", sshd.port, timeout=5)

    def ssh(known: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(sshd.port), "-i", str(ssh_user_key), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
             "-o", "GlobalKnownHostsFile=/dev/null", f"{sshd.user}@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)

    ok = ssh(str(known_hosts_path()))
    assert ok.returncode == 0, ok.stderr
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kt, b64 = (tmp_path / "k.pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kt} {b64}\n")
    bad = ssh(str(wrong))
    assert bad.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in bad.stderr


@pytest.mark.sshd
def test_forwarder_refuses_a_wrong_pinned_key(sshd, ssh_user_key, tmp_path):
    """What the daemon relies on: sshtunnel with ssh_host_key set fails against another key."""
    import logging

    import paramiko

    from autopod.tunnels.daemon import _forwarder_class

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    wrong = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "k"))
    fwd = _forwarder_class()(
        ("127.0.0.1", sshd.port), ssh_username=sshd.user, ssh_pkey=paramiko.PKey.from_path(ssh_user_key),
        allow_agent=False, host_pkey_directories=[], ssh_config_file=None, ssh_host_key=wrong,
        remote_bind_address=("127.0.0.1", 1), local_bind_address=("127.0.0.1", 0),
        logger=logging.getLogger("autopod.test.sshtunnel"))
    with pytest.raises(Exception):
        fwd.start()
    fwd.stop(force=True)
    assert not fwd.is_active
