"""The callers file's groups column and mTLS identities, and groups in the YAML file (pure: the
RPCs are in tests/integration/test_caller_groups.py)."""

from __future__ import annotations

import pytest

from vregistry_server.admin import callers as callers_module
from vregistry_server.admin.callers import ALL_GROUPS, Callers, CallersError, hash_token
from vregistry_server.config import ConfigError, build_config

TEAM_A = "team-a-token-Hc61pQ"
OPS = "ops-token-Wd40kR"
SPIFFE_A = "spiffe://mesh.local/ns/team-a/sa/puller"

FILE = f"""
# who                                   name       roles           groups
{hash_token(TEAM_A)}                    frontend-a resolver        team-a,shared
{hash_token(OPS)}                       ops        admin,resolver  *
id:{SPIFFE_A}                           puller-a   resolver        team-a
id:dns:Builder.Team-B.Test.             builder-b  admin           team-b
"""


def test_groups_column_is_parsed() -> None:
    callers = Callers.parse(FILE)
    assert len(callers) == 4 and callers.has_identities
    team_a = callers.identify(TEAM_A)
    assert team_a is not None and team_a.groups == {"team-a", "shared"}
    assert team_a.may_use("shared") and not team_a.may_use("team-b") and not team_a.all_groups
    ops = callers.identify(OPS)
    assert ops is not None and ops.groups == {ALL_GROUPS} and ops.may_use("anything")
    # The certificate identities: the URI SAN exactly, the DNS SAN case-insensitively.
    (puller,) = callers.identify_certificate([SPIFFE_A])
    assert puller.name == "puller-a" and puller.groups == {"team-a"}
    (builder,) = callers.identify_certificate(["dns:builder.team-b.test"])
    assert builder.name == "builder-b"
    assert callers.identify_certificate(["spiffe://mesh.local/ns/team-a/sa/other"]) == []
    assert callers.identify_certificate([SPIFFE_A.upper()]) == []
    assert not Callers.parse(f"{hash_token(OPS)} ops admin *").has_identities


def test_line_without_groups_column_is_refused_with_the_migration() -> None:
    old = f"# roles only\n{hash_token(OPS)} ops admin,resolver\n"
    with pytest.raises(CallersError) as info:
        Callers.parse(old, source="/etc/vregistry/callers")
    message = str(info.value)
    assert message.startswith("/etc/vregistry/callers: line 2: no groups column")
    assert "append ' *'" in message and "ops admin,resolver team-a" in message
    assert hash_token(OPS) not in message  # the hash is shortened, never needed in full
    with pytest.raises(CallersError, match="line 1: no groups column"):
        Callers.parse(f"id:{SPIFFE_A} puller resolver")


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        ("*,team-a", "stands alone"),
        ("team a", "expected"),  # five columns
        (",", "groups column is empty"),
        ("team_a/..", "not a valid id"),
        ("-team", "not a valid id"),
    ],
)
def test_bad_groups_are_refused(groups: str, needle: str) -> None:
    with pytest.raises(CallersError, match=needle):
        Callers.parse(f"{hash_token(OPS)} ops admin {groups}")


@pytest.mark.parametrize(
    ("identity", "needle"),
    [
        ("id:", "URI SAN"),
        ("id:not a uri", "expected"),
        ("id:no-scheme", "URI SAN"),
        ("id:dns:under_score.test", "invalid DNS name"),
        ("id:dns:", "invalid DNS name"),
    ],
)
def test_bad_identities_are_refused(identity: str, needle: str) -> None:
    with pytest.raises(CallersError, match=needle):
        Callers.parse(f"{identity} someone resolver team-a")


def test_the_same_identity_twice_is_refused() -> None:
    with pytest.raises(CallersError, match="line 2: the same identity appears twice"):
        Callers.parse(f"id:{SPIFFE_A} a resolver team-a\nid:{SPIFFE_A} b admin team-b")
    with pytest.raises(CallersError, match="same identity"):
        Callers.parse("id:dns:a.test a resolver x\nid:dns:A.TEST b resolver y")


def test_new_prints_a_line_with_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert callers_module.main(["new", "frontend", "resolver", "team-a,team-b"]) == 0
    out = capsys.readouterr().out
    token = out.split("token: ", 1)[1].split()[0]
    line = out.split("line:  ", 1)[1].strip()
    caller = Callers.parse(line).identify(token)
    assert caller is not None and caller.groups == {"team-a", "team-b"}
    # The old three-argument form and a bad group are refused, with the usage or the rule.
    assert callers_module.main(["new", "frontend", "resolver"]) == 2
    assert "GROUP[,GROUP]" in capsys.readouterr().err
    assert callers_module.main(["new", "frontend", "resolver", "*,x"]) == 2
    assert "stands alone" in capsys.readouterr().err


# --------------------------------------------------------------------------- the YAML file


def _upstream(upstream_id: str, **extra: str) -> dict[str, object]:
    return {"id": upstream_id, "name": upstream_id, "url": "https://r.example.com", **extra}


def test_yaml_groups_reach_the_model() -> None:
    config = build_config(
        {
            "upstreams": [_upstream("a1", group="team-a"), _upstream("d1")],
            "registries": [
                {"id": "ra", "name": "A", "upstreams": ["a1"], "group": "team-a"},
                {"id": "rd", "name": "D", "upstreams": ["d1"]},
            ],
        }
    )
    assert config.upstreams["a1"].group == "team-a" and config.upstreams["d1"].group == "default"
    assert config.registries["ra"].group == "team-a" and config.registries["rd"].group == "default"


def test_yaml_registry_lists_only_its_own_group() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(
            {
                "upstreams": [_upstream("a1", group="team-a")],
                "registries": [{"id": "rb", "name": "B", "upstreams": ["a1"], "group": "team-b"}],
            },
            source="config.yaml",
        )
    assert str(info.value).startswith("config.yaml: registries[0] (id 'rb'): field 'upstreams'")
    assert "'a1' is in group 'team-a', the registry in group 'team-b'" in str(info.value)


@pytest.mark.parametrize("section", ["upstreams", "registries"])
def test_yaml_group_must_be_an_id(section: str) -> None:
    document: dict[str, object] = {"upstreams": [_upstream("a1", group="bad group")]}
    if section == "registries":
        document = {"registries": [{"id": "r", "name": "R", "group": "bad/group"}]}
    with pytest.raises(ConfigError, match=rf"{section}\[0\] .*field 'group': .* not a valid id"):
        build_config(document, source="config.yaml")
