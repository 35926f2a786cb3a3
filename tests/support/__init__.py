"""Real test infrastructure: local processes (redis, docker-registry) and in-thread HTTP servers.

Nothing here is a mock. Every server listens on 127.0.0.1 on a free port, is started by a
fixture and is stopped (and its temporary directory removed) on teardown.
"""
