"""Protocol v1: commands, events, codes, and the session core.  No sockets here (docs/protocol.md)."""
