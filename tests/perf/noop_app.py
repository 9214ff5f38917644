"""The benchmark's floor: a bare Flask + Ariadne app served exactly like the gateway.

``bench_api`` compares the gateway's throughput with this app's to separate what the
gateway costs (validation, actor round trips, disk writes, request logging) from
what the framework stack costs anyway (HTTP parsing in gunicorn, Flask routing,
GraphQL parsing and execution). For that comparison to mean anything the floor must
run with the *same* gunicorn settings, so it reuses the gateway's own gunicorn
application class (``gateway.web.server._Gunicorn``) and only swaps the WSGI app it loads:
a change to the gateway's gunicorn settings moves the floor with it.

Run by ``bench_api`` as ``python -m tests.perf.noop_app --port P --workers W --threads T``
in a process group of its own, so the benchmark can always kill all of it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ariadne import MutationType, QueryType, graphql_sync, make_executable_schema
from flask import Flask, Response, jsonify, request

from gateway.core.config import Config, load_config
from gateway.web.server import _Gunicorn

TYPE_DEFS = """
type Query {
  noop: Boolean!
}

type Mutation {
  noop: Boolean!
}
"""


def create_noop_app() -> Flask:
    """One POST /graphql route doing what the gateway's route does minus the gateway:
    decode JSON, run ``graphql_sync``, return ``jsonify(result)``."""
    query, mutation = QueryType(), MutationType()
    query.set_field("noop", lambda *_: True)
    mutation.set_field("noop", lambda *_: True)
    schema = make_executable_schema(TYPE_DEFS, query, mutation)
    app = Flask("wagate-perf-floor")

    @app.post("/graphql")
    def graphql() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"errors": [{"message": "send a JSON object"}]}), 400
        _, result = graphql_sync(schema, data, debug=False)
        return jsonify(result), 200

    return app


class FloorServer(_Gunicorn):
    """The gateway's gunicorn application (same bind/workers/threads/worker class and
    timeouts), loading the no-op app instead of the gateway's."""

    def load(self) -> Any:
        return create_noop_app()


def floor_config(port: int, workers: int, threads: int) -> Config:
    """A gateway ``Config`` whose [http] section is what the floor must mirror."""
    return load_config(None, {"http.host": "127.0.0.1", "http.port": port,
                              "http.workers": workers, "http.threads": threads})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    FloorServer(floor_config(args.port, args.workers, args.threads)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
