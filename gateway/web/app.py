"""The Flask application: a small factory over the web tier's parts.

``create_app`` builds everything from a ``Config`` and never starts an actor system;
the bridge joins a running one on first use, after gunicorn has forked. The parts:

- ``gateway.web.state``: what the app holds (``app.extensions["wagate"]``);
- ``gateway.web.hooks``: request ids and the network, Host/Origin and token gates
  every request passes before any view runs (refusals are audited);
- ``gateway.web.graphql``: ``/graphql``, single operations and batches;
- ``gateway.web.rest``: ``/healthz``, ``/readyz``, ``/admin/health``, ``/metrics``,
  ``/admin/tokens``;
- ``gateway.web.errors``: one JSON error shape for whatever the views do not answer;
- ``gateway.web.dashboard`` and ``gateway.web.explorer``: the pages and their files.
"""

from __future__ import annotations

from flask import Flask

from actors.outbox.numbers import open_cache
from actors.supervisor.snapshot import SnapshotReader
from actors.system import allowed_networks, bind_address
from gateway.api.limits import limit_rules
from gateway.api.query_cache import DocumentCache
from gateway.api.resolvers import build_schema
from gateway.auth.tokens import authenticator_for
from gateway.core.config import Config
from gateway.core.origins import BrowserPolicy
from gateway.web.bridge import MAX_CALLS, ActorBridge
from gateway.web.dashboard import dashboard_blueprint
from gateway.web.errors import install_error_handlers
from gateway.web.explorer import explorer_blueprint
from gateway.web.graphql import graphql_blueprint
from gateway.web.hooks import install_hooks
from gateway.web.media import media_blueprint
from gateway.web.metrics import GraphqlMetrics
from gateway.web.rest import rest_blueprint
from gateway.web.state import Bridge, WebState
from gateway.web.uploads import MediaRequest


def create_app(config: Config, bridge: Bridge | None = None) -> Flask:
    """The app for ``config``; ``bridge``: the door into the actor system (by default
    an ``ActorBridge`` to the one ``config`` names)."""
    app = Flask("wagate", static_folder=None)  # the dashboard serves its own files
    app.request_class = MediaRequest  # file parts stream into the media store
    app.config["MAX_CONTENT_LENGTH"] = config.graphql.max_body_bytes
    web_state(config, bridge or actor_bridge(config)).install(app)
    install_hooks(app)
    app.register_blueprint(dashboard_blueprint(config))
    if config.graphql.explorer:
        app.register_blueprint(explorer_blueprint())
    app.register_blueprint(graphql_blueprint)
    app.register_blueprint(rest_blueprint)
    app.register_blueprint(media_blueprint)
    install_error_handlers(app)
    return app


def actor_bridge(config: Config) -> ActorBridge:
    """Two helper threads per web thread: one generation of calls stuck in a partition
    leaves room for the next (gateway.web.deadline)."""
    return ActorBridge(config.actors.admin_port, config.actors.ask_timeout_seconds,
                       bind_address(config), allowed_networks(config),
                       max(MAX_CALLS, 2 * config.http.threads), config.audit.batch_seconds,
                       member=config.cluster.role == "member")


def web_state(config: Config, bridge: Bridge) -> WebState:
    """Everything the app keeps for its lifetime; opens the number cache (SQLite)."""
    limits = config.graphql
    schema = build_schema()
    documents = DocumentCache()
    return WebState(
        config=config, bridge=bridge, schema=schema,
        snapshots=SnapshotReader(config.data_path),
        numbers=open_cache(config.data_path, config.numbers.positive_ttl_hours,
                           config.numbers.negative_ttl_hours),
        documents=documents,
        graphql_metrics=GraphqlMetrics(schema, documents.parser),
        rules=limit_rules(limits.max_depth, limits.max_cost, limits.introspection),
        authenticator=authenticator_for(config),
        browsers=BrowserPolicy.build(config.http.host, config.http.allowed_hosts,
                                     config.http.allowed_origins))
