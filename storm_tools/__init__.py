"""STORM's tooling: benchmarks (bench/), ``storm verify``, the fuzzing campaign and the demo seed.

A layer above the roles and the core (docs/architecture.md, "Layers"): tools may import gateway, tenants,
consumers, db and storm, never storm_cli; nothing in the server imports a tool."""
