"""STORM's process entry points: the ``storm`` command (main.py), one role per process (roles.py),
``storm dev``'s all-in-one app (apps.py) and the ``storm cluster`` supervisor (cluster.py).

The outermost layer (docs/architecture.md, "Layers"): it may import the tooling (storm_tools), the roles
(gateway, tenants, consumers) and the core (storm); nothing imports it."""
