"""The inventory: hosts.toml and the --hosts shortcuts become the same typed records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from storeharness.harness.hosts import netns
from storeharness.harness.hosts.inventory import (
    Host,
    InventoryError,
    load,
    parse_hosts,
    parse_toml,
)

GOOD = """
[hosts.rack1-a]
gateway = "ssh=rack1-a//python=/opt/venv/bin/python"
address = "10.1.0.11"
slots = 8
roles = ["store"]

[hosts.rack2-b]
gateway = "ssh=rack2-b"
address = "rack2-b.example.org"
"""


def test_a_hosts_file_becomes_typed_records_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(GOOD)
    assert load(path) == [
        Host("rack1-a", "ssh=rack1-a//python=/opt/venv/bin/python", "10.1.0.11", 8,
             frozenset({"store"})),
        Host("rack2-b", "ssh=rack2-b", "rack2-b.example.org", 1, frozenset()),
    ]  # fmt: skip
    assert parse_hosts(str(path)) == load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hosts.a\n", r"not valid TOML"),
        ("", r"no hosts: add a \[hosts.NAME\] table per host"),
        ("[host.a]\n", r"unknown top-level key 'host'"),
        ('[hosts.a]\naddress = "10.0.0.1"\n', r"host 'a': field 'gateway' is missing"),
        ('[hosts.a]\ngateway = "ssh=a"\n', r"host 'a': field 'address' is missing"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\nslot = 2\n',
         r"host 'a': unknown field 'slot' \(the fields are gateway, address, slots, roles\)"),
        ('[hosts.a]\ngateway = "rsh=a"\naddress = "10.0.0.1"\n',
         r"host 'a': field 'gateway' must be an execnet spec starting with one of popen"),
        ('[hosts.a]\ngateway = "ssh=a//python"\naddress = "10.0.0.1"\n',
         r"host 'a': field 'gateway' has a malformed option 'python'"),
        ('[hosts.a]\ngateway = 3\naddress = "10.0.0.1"\n',
         r"host 'a': field 'gateway' must be a string, got 3"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "no spaces"\n',
         r"host 'a': field 'address' 'no spaces' is neither an IP address nor a DNS name"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = 10\n',
         r"host 'a': field 'address' must be the host's data-plane IP address or DNS name"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\nslots = 0\n',
         r"host 'a': field 'slots' must be an integer >= 1, got 0"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\nslots = true\n',
         r"host 'a': field 'slots' must be an integer >= 1, got True"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\nroles = "store"\n',
         r"host 'a': field 'roles' must be a list of strings"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\nroles = ["db"]\n',
         r"host 'a': field 'roles' has unknown role 'db' \(known: store\)"),
        ('[hosts.a]\ngateway = "ssh=a"\naddress = "10.0.0.1"\n'
         '[hosts.b]\ngateway = "ssh=b"\naddress = "10.0.0.1"\n',
         r"hosts 'a' and 'b' have the same address '10.0.0.1'"),
        ('hosts = 3\n', r"no hosts"),
        ('hosts.a = 3\n', r"host 'a': must be a table"),
        ('[hosts."-a"]\ngateway = "ssh=a"\naddress = "10.0.0.1"\n', r"host '-a': a host name is"),
    ],
)  # fmt: skip
def test_every_bad_field_is_named(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=r"^my\.toml: " + message):
        parse_toml(text, "my.toml")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"cannot read hosts file '.*nope\.toml'"):
        load(tmp_path / "nope.toml")


def test_local_is_this_machine_on_loopback() -> None:
    (host,) = parse_hosts("local")
    assert host.gateway == f"popen//python={sys.executable}"
    assert (host.address, host.roles, host.namespace) == ("127.0.0.1", frozenset({"store"}), None)


def test_ssh_hosts_are_their_own_data_addresses() -> None:
    hosts = parse_hosts("ssh:h1,h2.example.org")
    assert [(h.name, h.gateway, h.address, h.roles) for h in hosts] == [
        ("h1", "ssh=h1//python=python3", "h1", {"store"}),
        ("h2.example.org", "ssh=h2.example.org//python=python3", "h2.example.org", frozenset()),
    ]


def test_netns_hosts_match_the_namespaces_build_creates() -> None:
    hosts = parse_hosts("netns:3", tag="t1")
    assert [h.namespace for h in hosts] == netns.host_namespaces(3, "t1")
    assert [h.address for h in hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    assert hosts[1].gateway == f"popen//python=ip netns exec storeharness-t1-h1 {sys.executable}"
    assert [h.roles for h in hosts] == [{"store"}, frozenset(), frozenset()]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("netns:0", r"expected netns:N with N a number of hosts 1\.\.64"),
        ("netns:x", r"expected netns:N"),
        ("ssh:", r"expected ssh:HOST\[,HOST...\], no empty names"),
        ("ssh:a,,b", r"no empty names"),
        ("ssh:a,a", r"a host is named twice"),
        ("ssh:a b", r"field 'address' 'a b' is neither an IP address nor a DNS name"),
        ("lokal", r"expected local, ssh:HOST\[,HOST...\], netns:N or a hosts\.toml path"),
    ],
)
def test_bad_shortcuts_are_named(spec: str, message: str) -> None:
    with pytest.raises(InventoryError, match=f"--hosts '{spec}'.*" + message):
        parse_hosts(spec)
