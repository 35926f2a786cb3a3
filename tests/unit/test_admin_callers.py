"""Caller tokens: the callers file's grammar and lookups (pure; the RPCs are in
tests/integration/test_admin_auth.py)."""

from __future__ import annotations

import pytest

from vregistry_server.admin.callers import Callers, CallersError, hash_token

RESOLVER_TOKEN = "resolver-token-Zq81xT0bQ"
ADMIN_TOKEN = "admin-token-Lm27vY4kP"
BOTH_TOKEN = "both-token-Pp93wE1rS"
WRONG_TOKEN = "wrong-token-Xx00aa11Bb"

CALLERS_FILE = f"""
# sha256 of the token   name        roles          groups
{hash_token(RESOLVER_TOKEN)} frontend resolver       *
{hash_token(ADMIN_TOKEN)}    ops      admin          *
{hash_token(BOTH_TOKEN)}     ci       admin,resolver *
"""


def test_callers_file_is_checked() -> None:
    good = Callers.parse(CALLERS_FILE)
    assert len(good) == 3
    assert good.identify(ADMIN_TOKEN) is not None and good.identify(WRONG_TOKEN) is None
    with pytest.raises(CallersError, match="line 1: unknown role"):
        Callers.parse(f"{hash_token('x')} someone superuser *")
    with pytest.raises(CallersError, match="sha256: and 64 hex"):
        Callers.parse("plaintext-token someone admin *")
    with pytest.raises(CallersError, match="appears twice"):
        Callers.parse(f"{hash_token('x')} a admin *\n{hash_token('x')} b resolver *")
    with pytest.raises(CallersError, match="expected"):
        Callers.parse(f"{hash_token('x')} a")
