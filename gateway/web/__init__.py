"""The HTTP process: the Flask app and its request hooks (``app``), the dashboard and
the GraphQL explorer with their files, ``/metrics``, and the bridge, the web tier's
only door into the actor system. ``python -m gateway.web`` runs the server
(``server``), as ``wagate serve`` does. The only package that imports Flask
(docs/architecture.md; import contracts in pyproject.toml)."""
