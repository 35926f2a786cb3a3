"""Basic auth: the header htpasswd-protected registries, ECR, Artifactory and Nexus accept."""

from __future__ import annotations

import base64

from vregistry_server.model import Credentials


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")
