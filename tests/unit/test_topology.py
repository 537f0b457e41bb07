"""Pure tests of the sandbox supercluster: no traffic between regions bypasses the WAN emulator."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from meridian.backbone.topology import (
    CLOSED_PORT,
    ServerSpec,
    build_topology,
    server_name,
    wan_proxies,
)
from meridian.config import MeridianConfig, load_config, parse_config, proxy_ports
from meridian.sandbox.wan_service import build_emulator
from tests.unit.config_harness import load_text

REGIONS = ("us-east", "eu-west", "ap-south")
URL = re.compile(r'"nats://127\.0\.0\.1:(\d+)"')


@pytest.fixture(scope="module")
def config() -> MeridianConfig:
    return load_config(None, env={})


@pytest.fixture(scope="module")
def specs(config: MeridianConfig) -> list[ServerSpec]:
    return build_topology(config)


def block(text: str, name: str) -> str:
    """The body of a top-level ``name { ... }`` block of a rendered server config."""
    match = re.search(rf"^{name} \{{\n(.*?)^\}}", text, re.MULTILINE | re.DOTALL)
    assert match, f"no {name} block"
    return match.group(1)


def route_ports(spec: ServerSpec) -> list[int]:
    line = re.search(r"^\s*routes: \[(.*)\]$", block(spec.config_text, "cluster"), re.MULTILINE)
    assert line
    return [int(p) for p in URL.findall(line.group(1))]


def gateway_ports(spec: ServerSpec) -> dict[str, list[int]]:
    entries = re.findall(
        r'\{ name: "([^"]+)", urls: \[(.*?)\] \}', block(spec.config_text, "gateway")
    )
    gateways = {name: [int(p) for p in URL.findall(urls)] for name, urls in entries}
    assert len(gateways) == len(entries), "a gateway is listed twice"
    return gateways


def own_ports(config: MeridianConfig, region: str) -> set[int]:
    r = config.region(region)
    return {*vars(r.regional).values(), *vars(r.global_).values()}


def test_two_servers_per_region_in_start_order(
    config: MeridianConfig, specs: list[ServerSpec]
) -> None:
    assert [(s.name, s.region, s.cluster) for s in specs] == [
        (name, r, cluster) for r in REGIONS for name, cluster in ((r, r), (f"global-{r}", "global"))
    ]
    assert len({s.name for s in specs}) == 6
    for s in specs:
        region = config.region(s.region)
        assert s.ports == (region.global_ if s.cluster == "global" else region.regional)
        assert s.client_url == f"nats://127.0.0.1:{s.ports.client}"
        assert s.monitor_url == f"http://127.0.0.1:{s.ports.monitor}"
        assert s.store_dir == config.sandbox.workdir / "nats" / s.name
        assert server_name(s.region, s.cluster) == s.name


def test_each_config_names_its_server_cluster_and_listeners(specs: list[ServerSpec]) -> None:
    for s in specs:
        text = s.config_text
        assert f'server_name: "{s.name}"' in text
        assert f'listen: "127.0.0.1:{s.ports.client}"' in text
        assert f'http: "127.0.0.1:{s.ports.monitor}"' in text
        assert f'name: "{s.cluster}"\n  listen: "127.0.0.1:{s.ports.cluster}"' in block(
            text, "cluster"
        )
        assert f'name: "{s.cluster}"\n  listen: "127.0.0.1:{s.ports.gateway}"' in block(
            text, "gateway"
        )
        assert f'store_dir: "{s.store_dir}"' in text


def test_every_server_is_tagged_with_its_region(specs: list[ServerSpec]) -> None:
    for s in specs:
        assert f'server_tags: ["region:{s.region}"]' in s.config_text
        assert 'unique_tag: "region:"' in block(s.config_text, "jetstream")


def test_only_global_servers_sync_always(specs: list[ServerSpec]) -> None:
    for s in specs:
        syncs = "sync_interval: always" in block(s.config_text, "jetstream")
        assert syncs == (s.cluster == "global"), s.name


def test_every_server_hides_its_own_addresses(specs: list[ServerSpec]) -> None:
    for s in specs:
        cluster = block(s.config_text, "cluster")
        gateway = block(s.config_text, "gateway")
        assert "no_advertise: true" in cluster
        assert "pool_size: -1" in cluster
        assert f'advertise: "127.0.0.1:{CLOSED_PORT}"' in cluster
        assert f'advertise: "127.0.0.1:{CLOSED_PORT}"' in gateway
        assert "reject_unknown_cluster: true" in gateway
        # No other advertise value anywhere.
        advertised = re.findall(r"(?<!no_)advertise: (\S+)", s.config_text)
        assert advertised == [f'"127.0.0.1:{CLOSED_PORT}"'] * 2


def wan_rule_breaches(config: MeridianConfig, spec: ServerSpec) -> list[str]:
    """Every URL ``spec`` dials must be its own region's port, or a proxy of its own
    region (of the right kind) that leads into the region it claims to reach."""
    proxies = proxy_ports(config.regions, config.wan)
    by_port = {port: key for key, port in proxies.items()}
    upstream = {p.listen_port: p for p in wan_proxies(config)}
    owner = {port: r for r in config.region_names for port in own_ports(config, r)}
    assert not set(owner) & set(by_port)

    dialled: list[tuple[str | None, int]] = [(None, p) for p in route_ports(spec)]
    dialled += [(gw, p) for gw, ports in gateway_ports(spec).items() for p in ports]
    # Every URL in the file is a route or gateway URL we have checked.
    assert len(URL.findall(spec.config_text)) == len(dialled)
    breaches = []
    for gateway, port in dialled:
        kind = "route" if gateway is None else "gateway"
        if port not in by_port:
            if owner.get(port) != spec.region:
                breaches.append(f"{spec.name} dials {port} directly")
            continue
        proxy_kind, src, dst = by_port[port]
        target = upstream[port]
        if src != spec.region:
            breaches.append(f"{spec.name} uses {src}'s proxy {port}")
        if proxy_kind != kind:
            breaches.append(f"{spec.name} dials {proxy_kind} proxy {port} as a {kind}")
        if (target.src, target.dst) != (src, dst) or owner.get(target.upstream_port) != dst:
            breaches.append(f"proxy {port} does not lead into {dst}")
        if gateway is not None and gateway != dst:
            breaches.append(f"{spec.name}'s gateway {gateway} goes to {dst}")
    return breaches


def test_no_traffic_between_regions_bypasses_the_emulator(
    config: MeridianConfig, specs: list[ServerSpec]
) -> None:
    for s in specs:
        assert wan_rule_breaches(config, s) == []


@pytest.mark.parametrize(
    ("old", "new", "breach"),
    [
        # global-us-east's route to eu-west, through eu-west's own proxy to ap-south
        ("14900", "14903", "uses eu-west's proxy"),
        # ... or straight at eu-west's global cluster port
        ("14900", "14111", "dials 14111 directly"),
        # a gateway proxy used as a route
        ("14900", "14906", "as a route"),
        # the eu-west gateway pointed at the proxy into ap-south
        ("14906", "14907", "gateway eu-west goes to ap-south"),
    ],
)
def test_the_wan_rule_check_catches_a_bypass(
    config: MeridianConfig, specs: list[ServerSpec], old: str, new: str, breach: str
) -> None:
    """The check above has teeth: a doctored config fails it."""
    good = specs[1]
    assert good.name == "global-us-east"
    bad = dataclasses.replace(
        good,
        config_text=good.config_text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}"),
    )
    assert any(breach in b for b in wan_rule_breaches(config, bad))


def test_route_and_gateway_wiring(config: MeridianConfig, specs: list[ServerSpec]) -> None:
    proxies = proxy_ports(config.regions, config.wan)
    for s in specs:
        region = config.region(s.region)
        others = [o for o in REGIONS if o != s.region]
        gateways = gateway_ports(s)
        if s.cluster == "global":
            # Routes: one per other region's global member, each through a route proxy.
            assert route_ports(s) == [proxies[("route", s.region, o)] for o in others]
            # Gateways: every regional cluster; its own region's one directly.
            assert set(gateways) == set(REGIONS)
            assert gateways[s.region] == [region.regional.gateway]
        else:
            # A lone regional server routes to itself.
            assert route_ports(s) == [region.regional.cluster]
            # Gateways: the other regions and global, which it reaches in-region.
            assert set(gateways) == {*others, "global"}
            assert gateways["global"] == [region.global_.gateway]
        for o in others:
            assert gateways[o] == [proxies[("gateway", s.region, o)]]


def test_wan_proxies_cover_every_ordered_pair(config: MeridianConfig) -> None:
    proxies = wan_proxies(config)
    assert len(proxies) == 12
    assert len({p.listen_port for p in proxies}) == 12
    assert len({p.name for p in proxies}) == 12
    ports = proxy_ports(config.regions, config.wan)
    for p in proxies:
        kind = p.name.split(":")[0]
        assert p.name == f"{kind}:{p.src}->{p.dst}"
        assert p.src != p.dst
        assert ports[(kind, p.src, p.dst)] == p.listen_port
        dst = config.region(p.dst)
        if kind == "route":
            assert p.upstream_port == dst.global_.cluster
        else:
            assert kind == "gateway"
            assert p.upstream_port == dst.regional.gateway
    assert {(p.name.split(":")[0], p.src, p.dst) for p in proxies} == set(ports)


def test_single_region_topology_routes_to_itself() -> None:
    config = parse_config({"region": [{"name": "solo"}], "wan": {"link": []}}, env={})
    specs = build_topology(config)
    assert [s.name for s in specs] == ["solo", "global-solo"]
    solo = config.region("solo")
    assert route_ports(specs[1]) == [solo.global_.cluster]
    assert wan_proxies(config) == []
    assert gateway_ports(specs[0]) == {"global": [solo.global_.gateway]}


def test_with_mutual_tls_a_certificate_is_the_nats_user(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[wan]\nlink = []\n")
    text = next(s for s in build_topology(config) if s.name == "us-east").config_text
    assert "verify_and_map: true" in text
    assert "password" not in text and "no_auth_user" not in text
    td = "spiffe://meridian.local"
    assert (
        f'user: "{td}/region/us-east/agent", permissions: {{ subscribe: '
        '{ deny: ["mg.invoke.eu-west", "mg.invoke.ap-south", "mg.traffic.eu-west", '
        '"mg.traffic.ap-south"] } }'
    ) in text
    assert f'SYS {{ users: [ {{ user: "{td}/operator/nats-system" }} ] }}' in text
    assert str(config.identity_dir("nats-us-east") / "cert.pem") in text


def test_with_mutual_tls_routes_and_gateways_admit_only_nats_servers(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[wan]\nlink = []\n")
    text = next(s for s in build_topology(config) if s.name == "global-us-east").config_text
    cluster = text[text.index("cluster {") : text.index("gateway {")]
    gateway = text[text.index("gateway {") :]
    for block in (cluster, gateway):
        assert "verify_and_map: true" in block
        assert 'authorization { user: "CN=nats-server,O=Meridian" }' in block
        assert str(config.identity_dir("nats-global-us-east") / "key.pem") in block


def test_the_emulator_terminates_link_tls_as_the_servers_of_the_source_region(
    tmp_path: Path,
) -> None:
    config = load_text(tmp_path, "[wan]\nlink = []\n")
    by_name = {p.name: p for p in wan_proxies(config)}
    route, gateway = by_name["route:us-east->eu-west"], by_name["gateway:us-east->eu-west"]
    assert (route.upstream_server, route.source_servers) == ("global-eu-west", ("global-us-east",))
    assert (gateway.upstream_server, gateway.source_servers) == (
        "eu-west",
        ("us-east", "global-us-east"),
    )
    tls = build_emulator(config)._proxies["gateway:us-east->eu-west"].spec.tls
    assert tls is not None
    assert tls.upstream.uri == "spiffe://meridian.local/nats/eu-west"
    assert sorted(tls.sources) == [
        "spiffe://meridian.local/nats/global-us-east",
        "spiffe://meridian.local/nats/us-east",
    ]
    insecure = load_text(tmp_path, '[wan]\nlink = []\n[security]\nmode = "insecure"\n')
    assert build_emulator(insecure)._proxies["route:us-east->eu-west"].spec.tls is None


def test_insecure_mode_has_no_password_and_no_system_user(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[wan]\nlink = []\n[security]\nmode = "insecure"\n')
    text = build_topology(config)[0].config_text
    assert "password" not in text and "verify_and_map" not in text and "tls {" not in text
    assert "SYS {}" in text
