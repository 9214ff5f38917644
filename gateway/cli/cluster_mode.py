"""Whether ``wagate serve`` may start in cluster mode (``cluster.role`` leader/member).

Thespian's sockets accept pickled messages, which can run code. On one host they
listen on loopback only; in a cluster they must listen on an address other hosts
reach, so the gateway refuses to start until the operator has said, in
``cluster.allow_networks``, who may connect (and the README asks for the same rule
in the firewall: the check here closes connections, the firewall never lets them in).
"""

from __future__ import annotations

from gateway.core.config import Config


def cluster_problem(config: Config) -> str | None:
    """Why this configuration may not run in cluster mode, or None (also for "single")."""
    cluster = config.cluster
    if cluster.role == "single":
        return None
    if not cluster.allow_networks:
        return (f"cluster.role = \"{cluster.role}\" exposes the actor system, which runs "
                "whatever code reaches its ports (pickle), to the network; set "
                "cluster.allow_networks to the cluster's hosts, one /32 (or /128) each "
                "(for example [\"10.0.0.1/32\", \"10.0.0.2/32\"]), and firewall "
                "actors.admin_port and the actors' ports "
                "to the same addresses (README: Deployment on several hosts)")
    if not cluster.advertise_address:
        return ("cluster mode needs cluster.advertise_address: this host's IP address that "
                "the other hosts reach (every actor-system socket binds to it)")
    if cluster.role == "member" and not cluster.leaders:
        return ("cluster.role = \"member\" needs cluster.leaders: the leader's "
                "\"advertise_address:admin_port\"")
    return None
