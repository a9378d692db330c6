"""Gossip-based keep migration (specs/migration.md), sans-IO.

One file per idea: `successor` (who acts, rendezvous hashing), `location`
(signed keep -> host records and the fencing rule), `messages` (migrate.*
wire records), `standby` (replication to standbys), `triggers` (which keeps
must move and why), `drain` (planned hand-over), `engine` (the per-agent
object that composes them and that MeshNode drives).
"""
