"""The NATS supercluster of a sandbox: which servers exist and how they join.

Per region there are two servers:

- ``<region>``: the region's own cluster (one server in the sandbox);
- ``global-<region>``: that region's member of the stretched ``global`` cluster.

Gateways join the clusters into one supercluster. Every connection between two
regions (the ``global`` routes, and the gateways between regions) is dialled at
a WAN-emulator proxy port, never at the peer directly. Three settings keep it
that way (found in the feasibility run, DESIGN.md §10):

- every server lists explicit routes/gateways to proxy ports;
- ``cluster.pool_size: -1``, because pooled routes churned through proxies;
- ``advertise`` points at a closed port and ``no_advertise`` is set, so gossip
  never hands out a direct address that would bypass the emulator.

A region's own cluster reaches ``global`` through the ``global`` server of the
same region, so an agent's path to the ``global`` cluster starts in its region.

With mutual TLS (``[security] mode = "mtls"``, the default) every server's
client port requires a certificate from the sandbox's CA and maps it to a user
(``verify_and_map``): each region's agent by its SPIFFE ID, allowed everything
but subscribing to another region's forwarded calls; the operator
(``operator/meridian``: the CLI and tests); and ``operator/nats-system`` in the
system account. There are no passwords and no ``no_auth_user``: a certificate
that maps to no user (a service's, say) is refused. Routes and gateways are
mutual TLS too, mapped to the one user NATS allows there: the subject every
NATS server's leaf shares (``NATS_SERVER_SUBJECT``). They cross the WAN
emulator, which terminates their TLS to strip the address gossip in their
``INFO`` messages (sandbox/wan_tls.py, sandbox/gossip.py).

This module only computes; it starts nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from meridian.config import GLOBAL_CLUSTER, MeridianConfig, NatsPorts, proxy_ports
from meridian.security.model import NATS_SERVER_SUBJECT

#: A loopback port nothing listens on: what servers advertise, so gossiped
#: addresses lead nowhere and every peer keeps using the proxy URLs it was given.
CLOSED_PORT = 1

PING_INTERVAL = "2s"
PING_MAX = 3


#: Calls forwarded to a region's agents: ``mg.invoke.<region>``. Only that
#: region's agents may subscribe to them.
FORWARD_SUBJECT = "mg.invoke"
#: Questions to a region's agents about the traffic each version of a service
#: served there (rollout analysis): ``mg.traffic.<region>``. Only that
#: region's agents may subscribe to them.
TRAFFIC_SUBJECT = "mg.traffic"
#: The system account's user (docs/security.md).
SYSTEM_USER = "operator/nats-system"


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and who may connect, by SPIFFE ID."""

    cert: Path
    key: Path
    bundle: Path
    #: (user, subjects it may not subscribe to)
    users: tuple[tuple[str, tuple[str, ...]], ...]
    system_user: str


def server_tls(config: MeridianConfig, name: str) -> ServerTls | None:
    """The client-port TLS of sandbox server ``name``; None in insecure mode."""
    if not config.security.tls:
        return None
    folder = config.identity_dir(f"nats-{name}")
    td = f"spiffe://{config.security.trust_domain}"
    regions = config.region_names
    users = [
        (
            f"{td}/region/{r}/agent",
            tuple(
                f"{subject}.{o}"
                for subject in (FORWARD_SUBJECT, TRAFFIC_SUBJECT)
                for o in regions
                if o != r
            ),
        )
        for r in regions
    ]
    users.append((f"{td}/operator/meridian", ()))
    return ServerTls(
        cert=folder / "cert.pem",
        key=folder / "key.pem",
        bundle=folder / "bundle.pem",
        users=tuple(users),
        system_user=f"{td}/{SYSTEM_USER}",
    )


def _peer_tls(tls: ServerTls | None) -> str:
    """Routes' and gateways' mutual TLS: only a NATS server's leaf from the
    bundle (subject NATS_SERVER_SUBJECT) may join as a route or a gateway."""
    if tls is None:
        return ""
    return f"""
  tls {{
    cert_file: {_q(str(tls.cert))}
    key_file: {_q(str(tls.key))}
    ca_file: {_q(str(tls.bundle))}
    verify_and_map: true
    timeout: 2
  }}
  authorization {{ user: {_q(NATS_SERVER_SUBJECT)} }}"""


def _auth(tls: ServerTls | None) -> str:
    """The client port's TLS and the accounts: certificates mapped to users,
    or (insecure mode) the one password-less default user."""
    if tls is None:
        return """no_auth_user: "meridian"
accounts {
  MERIDIAN { jetstream: enabled, users: [ { user: "meridian" } ] }
  SYS {}
}
system_account: "SYS"
"""
    users = ",\n".join(
        f"      {{ user: {_q(user)}"
        + (
            f", permissions: {{ subscribe: {{ deny: [{', '.join(_q(d) for d in deny)}] }} }}"
            if deny
            else ""
        )
        + " }"
        for user, deny in tls.users
    )
    return f"""tls {{
  cert_file: {_q(str(tls.cert))}
  key_file: {_q(str(tls.key))}
  ca_file: {_q(str(tls.bundle))}
  verify_and_map: true
  timeout: 2
}}
accounts {{
  MERIDIAN {{
    jetstream: enabled
    users: [
{users}
    ]
  }}
  SYS {{ users: [ {{ user: {_q(tls.system_user)} }} ] }}
}}
system_account: "SYS"
"""


@dataclass(frozen=True)
class ServerSpec:
    """One nats-server of the sandbox, with its rendered configuration."""

    name: str
    region: str
    cluster: str
    ports: NatsPorts
    store_dir: Path
    config_text: str

    @property
    def client_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports.client}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.monitor}"


def server_name(region: str, cluster: str) -> str:
    return f"global-{region}" if cluster == GLOBAL_CLUSTER else region


def _q(value: str) -> str:
    # JSON strings are valid NATS config strings.
    return json.dumps(value)


def _render(
    *,
    name: str,
    region: str,
    cluster: str,
    ports: NatsPorts,
    store_dir: Path,
    routes: list[str],
    gateways: dict[str, list[str]],
    sync_always: bool,
    tls: ServerTls | None = None,
) -> str:
    route_list = ", ".join(_q(u) for u in routes)
    gw_entries = ",\n".join(
        f"      {{ name: {_q(gw)}, urls: [{', '.join(_q(u) for u in urls)}] }}"
        for gw, urls in sorted(gateways.items())
    )
    sync = "\n  sync_interval: always" if sync_always else ""
    return f"""# Generated by meridian sandbox; edit the Meridian configuration instead.
server_name: {_q(name)}
listen: "127.0.0.1:{ports.client}"
http: "127.0.0.1:{ports.monitor}"
server_tags: [{_q("region:" + region)}]
ping_interval: {_q(PING_INTERVAL)}
ping_max: {PING_MAX}
# A 1 MiB value plus headers must fit in one message.
max_payload: 8MB
{_auth(tls)}
jetstream {{
  store_dir: {_q(str(store_dir))}
  max_memory_store: 256MB
  max_file_store: 2GB
  unique_tag: "region:"{sync}
}}

cluster {{
  name: {_q(cluster)}
  listen: "127.0.0.1:{ports.cluster}"
  advertise: "127.0.0.1:{CLOSED_PORT}"
  no_advertise: true
  pool_size: -1
  routes: [{route_list}]{_peer_tls(tls)}
}}

gateway {{
  name: {_q(cluster)}
  listen: "127.0.0.1:{ports.gateway}"
  advertise: "127.0.0.1:{CLOSED_PORT}"
  reject_unknown_cluster: true
  gateways: [
{gw_entries}
  ]{_peer_tls(tls)}
}}
"""


def build_topology(config: MeridianConfig) -> list[ServerSpec]:
    """Every server of the sandbox described by ``config``, in start order."""
    proxies = proxy_ports(config.regions, config.wan)
    work = config.sandbox.workdir
    specs: list[ServerSpec] = []
    for region in config.regions:
        r = region.name
        others = [o for o in config.regions if o.name != r]

        # The region's own cluster. A JetStream cluster needs a configured
        # route even with one server; a route to itself works.
        gateways = {o.name: [f"nats://127.0.0.1:{proxies[('gateway', r, o.name)]}"] for o in others}
        gateways[GLOBAL_CLUSTER] = [f"nats://127.0.0.1:{region.global_.gateway}"]
        name = server_name(r, r)
        specs.append(
            ServerSpec(
                name=name,
                region=r,
                cluster=r,
                ports=region.regional,
                store_dir=work / "nats" / name,
                config_text=_render(
                    name=name,
                    region=r,
                    cluster=r,
                    ports=region.regional,
                    store_dir=work / "nats" / name,
                    routes=[f"nats://127.0.0.1:{region.regional.cluster}"],
                    gateways=gateways,
                    sync_always=False,
                    tls=server_tls(config, name),
                ),
            )
        )

        # The region's member of the stretched global cluster.
        routes = [f"nats://127.0.0.1:{proxies[('route', r, o.name)]}" for o in others]
        if not routes:
            routes = [f"nats://127.0.0.1:{region.global_.cluster}"]
        gateways = {o.name: [f"nats://127.0.0.1:{proxies[('gateway', r, o.name)]}"] for o in others}
        gateways[r] = [f"nats://127.0.0.1:{region.regional.gateway}"]
        name = server_name(r, GLOBAL_CLUSTER)
        specs.append(
            ServerSpec(
                name=name,
                region=r,
                cluster=GLOBAL_CLUSTER,
                ports=region.global_,
                store_dir=work / "nats" / name,
                config_text=_render(
                    name=name,
                    region=r,
                    cluster=GLOBAL_CLUSTER,
                    ports=region.global_,
                    store_dir=work / "nats" / name,
                    routes=routes,
                    gateways=gateways,
                    sync_always=True,
                    tls=server_tls(config, name),
                ),
            )
        )
    return specs


@dataclass(frozen=True)
class ProxyTarget:
    """A WAN proxy: servers in ``src`` dial ``listen_port`` to reach ``upstream_port`` in ``dst``."""

    name: str
    src: str
    dst: str
    listen_port: int
    upstream_port: int
    #: "route" (to dst's global server) or "gateway" (to dst's own cluster).
    kind: str = "route"

    @property
    def upstream_server(self) -> str:
        return server_name(self.dst, GLOBAL_CLUSTER if self.kind == "route" else self.dst)

    @property
    def source_servers(self) -> tuple[str, ...]:
        """The servers that dial this proxy: a region's global server for
        routes; both of its servers for gateways."""
        own = server_name(self.src, GLOBAL_CLUSTER)
        return (own,) if self.kind == "route" else (server_name(self.src, self.src), own)


def wan_proxies(config: MeridianConfig) -> list[ProxyTarget]:
    """The proxies the WAN emulator must run for this topology."""
    by_name = {r.name: r for r in config.regions}
    targets = []
    for (kind, src, dst), port in proxy_ports(config.regions, config.wan).items():
        dst_region = by_name[dst]
        upstream = dst_region.global_.cluster if kind == "route" else dst_region.regional.gateway
        targets.append(ProxyTarget(f"{kind}:{src}->{dst}", src, dst, port, upstream, kind))
    return targets
