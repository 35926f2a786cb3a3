"""``python -m vregistry_server.healthcheck``: the container health check (kept at this path).

The implementation lives in runtime/healthcheck.py; this module keeps the command
that the Dockerfile and deployments already run working.
"""

from __future__ import annotations

import sys

from vregistry_server.runtime.healthcheck import main

if __name__ == "__main__":
    sys.exit(main())
