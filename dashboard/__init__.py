"""The web side of tickwork: the JSON API, the server-sent event stream, health and metrics.

`dashboard.api.create_app(runtime)` builds the ASGI application for one process's Runtime.
Nothing in the engine imports this package.
"""
