"""Sans-IO core: everything that decides something, as plain objects.

No sockets, no trio, no wall clock, no global randomness: callers pass the
current time and a `random.Random` in. This is what lets the simulator run
the real code.
"""
