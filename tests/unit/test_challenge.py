"""WWW-Authenticate parsing: real registries' headers, the RFC 7235 grammar, and fuzzing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vregistry_server.oci.challenge import (
    MAX_CHALLENGES,
    MAX_HEADER_LENGTH,
    MAX_PARAMS,
    Challenge,
    ChallengeParseError,
    parse_challenges,
    preferred_challenge,
)

Expected = list[tuple[str, dict[str, str], str | None]]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shape(challenges: list[Challenge]) -> Expected:
    return [(c.scheme, dict(c.params), c.token68) for c in challenges]


# ---------------------------------------------------------------------- real registries

REAL_WORLD: list[Any] = [
    pytest.param(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
        [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"})],
        id="docker-hub",
    ),
    pytest.param(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        [
            (
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/alpine:pull",
                },
            )
        ],
        id="docker-hub-with-scope",
    ),
    pytest.param(
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
        [
            (
                "bearer",
                {
                    "realm": "https://ghcr.io/token",
                    "service": "ghcr.io",
                    "scope": "repository:user/image:pull",
                },
            )
        ],
        id="ghcr",
    ),
    pytest.param(
        'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
        [("bearer", {"realm": "https://quay.io/v2/auth", "service": "quay.io"})],
        id="quay",
    ),
    pytest.param(
        'Bearer realm="https://harbor.example.com/service/token",service="harbor-registry"',
        [
            (
                "bearer",
                {"realm": "https://harbor.example.com/service/token", "service": "harbor-registry"},
            )
        ],
        id="harbor",
    ),
    pytest.param(
        'Bearer realm="https://x.azurecr.io/oauth2/token",service="x.azurecr.io"',
        [("bearer", {"realm": "https://x.azurecr.io/oauth2/token", "service": "x.azurecr.io"})],
        id="acr",
    ),
    pytest.param(
        'Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"',
        [
            (
                "basic",
                {
                    "realm": "https://123.dkr.ecr.us-east-1.amazonaws.com/",
                    "service": "ecr.amazonaws.com",
                },
            )
        ],
        id="ecr",
    ),
    pytest.param(
        'Bearer realm="https://public.ecr.aws/token/",service="public.ecr.aws",scope="aws"',
        [
            (
                "bearer",
                {
                    "realm": "https://public.ecr.aws/token/",
                    "service": "public.ecr.aws",
                    "scope": "aws",
                },
            )
        ],
        id="ecr-public",
    ),
    pytest.param(
        'Bearer realm="https://gitlab.com/jwt/auth",service="container_registry"',
        [("bearer", {"realm": "https://gitlab.com/jwt/auth", "service": "container_registry"})],
        id="gitlab",
    ),
    pytest.param(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a:pull",error="insufficient_scope"',
        [
            (
                "bearer",
                {
                    "realm": "https://auth.example.com/token",
                    "service": "registry.example.com",
                    "scope": "repository:a:pull",
                    "error": "insufficient_scope",
                },
            )
        ],
        id="distribution-insufficient-scope",
    ),
    pytest.param(
        'Bearer realm="https://auth.example.com/token",error="invalid_token",'
        'error_description="The access token expired"',
        [
            (
                "bearer",
                {
                    "realm": "https://auth.example.com/token",
                    "error": "invalid_token",
                    "error_description": "The access token expired",
                },
            )
        ],
        id="invalid-token",
    ),
    pytest.param(
        'BASIC realm="Sonatype Nexus Repository Manager"',
        [("basic", {"realm": "Sonatype Nexus Repository Manager"})],
        id="nexus-upper-case",
    ),
    pytest.param(
        'Basic realm="Registry Realm"',
        [("basic", {"realm": "Registry Realm"})],
        id="distribution-htpasswd",
    ),
]


@pytest.mark.parametrize(("header", "expected"), REAL_WORLD)
def test_real_registry_headers(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert _shape(parse_challenges([header])) == [(s, p, None) for s, p in expected]


def test_properties_read_the_params() -> None:
    [challenge] = parse_challenges(
        [
            'Bearer realm="https://a/token",service="reg",scope="repository:a:pull",'
            'error="insufficient_scope"'
        ]
    )
    assert challenge.realm == "https://a/token"
    assert challenge.service == "reg"
    assert challenge.scope == "repository:a:pull"
    assert challenge.error == "insufficient_scope"
    [bare] = parse_challenges(["Basic"])
    assert (bare.realm, bare.service, bare.scope, bare.error) == (None, None, None, None)


# ---------------------------------------------------------------------- grammar

GRAMMAR: list[Any] = [
    pytest.param(
        'Bearer realm="a",service="b", Basic realm="c"',
        [("bearer", {"realm": "a", "service": "b"}, None), ("basic", {"realm": "c"}, None)],
        id="two-challenges-one-line",
    ),
    pytest.param(
        'Basic realm="c", Bearer realm="a", scope="x"',
        [("basic", {"realm": "c"}, None), ("bearer", {"realm": "a", "scope": "x"}, None)],
        id="basic-first",
    ),
    pytest.param(
        r'Bearer realm="a\"b\\c"',
        [("bearer", {"realm": 'a"b\\c'}, None)],
        id="escaped-quote-and-backslash",
    ),
    pytest.param(
        r'Bearer realm="\a\b\c"',
        [("bearer", {"realm": "abc"}, None)],
        id="escaped-ordinary-characters",
    ),
    pytest.param(
        'Bearer scope="repository:a:pull,push",realm="x=y, z"',
        [("bearer", {"scope": "repository:a:pull,push", "realm": "x=y, z"}, None)],
        id="comma-and-equals-inside-quotes",
    ),
    pytest.param(
        'bEaReR ReAlM="a", SERVICE="b"',
        [("bearer", {"realm": "a", "service": "b"}, None)],
        id="case-insensitive-scheme-and-names",
    ),
    pytest.param(
        'Bearer realm = "a" ,service\t=\t"b"\t,  scope =x',
        [("bearer", {"realm": "a", "service": "b", "scope": "x"}, None)],
        id="whitespace-around-equals-and-commas",
    ),
    pytest.param(
        ',, Bearer realm="a",,, service="b" ,, , Basic ,,',
        [("bearer", {"realm": "a", "service": "b"}, None), ("basic", {}, None)],
        id="empty-list-elements",
    ),
    pytest.param("Negotiate abc==", [("negotiate", {}, "abc==")], id="token68"),
    pytest.param(
        "Negotiate a+b/c~d.e_f-g=, Basic realm=x",
        [("negotiate", {}, "a+b/c~d.e_f-g="), ("basic", {"realm": "x"}, None)],
        id="token68-then-challenge",
    ),
    pytest.param("Negotiate", [("negotiate", {}, None)], id="scheme-only"),
    pytest.param(
        "Negotiate, NTLM, Basic",
        [("negotiate", {}, None), ("ntlm", {}, None), ("basic", {}, None)],
        id="several-scheme-only",
    ),
    pytest.param(
        "Bearer realm=https://x/token,service=x.io",
        [("bearer", {"realm": "https://x/token", "service": "x.io"}, None)],
        id="lenient-unquoted-url",
    ),
    pytest.param(
        "Bearer realm=https://x/token?a=b service",
        None,
        id="unquoted-value-stops-at-whitespace",
    ),
    pytest.param(
        'Bearer realm="first", REALM="second"',
        [("bearer", {"realm": "first"}, None)],
        id="duplicate-param-first-wins",
    ),
    pytest.param('Bearer realm=""', [("bearer", {"realm": ""}, None)], id="empty-quoted-value"),
    pytest.param(
        'Bearer realm="caf\u00e9\ttab"',
        [("bearer", {"realm": "caf\u00e9\ttab"}, None)],
        id="obs-text-and-tab-in-quotes",
    ),
    pytest.param("", [], id="empty-value"),
    pytest.param("  ,  ", [], id="only-separators"),
    pytest.param("Basic , realm=x", [("basic", {"realm": "x"}, None)], id="empty-element-first"),
    pytest.param("Bearer realm", [("bearer", {}, "realm")], id="lone-token-is-token68"),
    # "realm=" is a valid token68 (RFC 7235 allows trailing '='), not an empty parameter.
    pytest.param("Bearer realm=", [("bearer", {}, "realm=")], id="token-equals-is-token68"),
]


@pytest.mark.parametrize(("header", "expected"), GRAMMAR)
def test_grammar(header: str, expected: Expected | None) -> None:
    if expected is None:
        with pytest.raises(ChallengeParseError):
            parse_challenges([header])
    else:
        assert _shape(parse_challenges([header])) == expected


def test_several_header_values_in_order() -> None:
    values = ['Basic realm="b"', "", 'Bearer realm="a", Negotiate xyz=']
    assert _shape(parse_challenges(values)) == [
        ("basic", {"realm": "b"}, None),
        ("bearer", {"realm": "a"}, None),
        ("negotiate", {}, "xyz="),
    ]


def test_a_bare_string_is_one_header_value() -> None:
    assert _shape(parse_challenges('Basic realm="x"')) == [("basic", {"realm": "x"}, None)]


def test_accepts_any_iterable() -> None:
    values = (v for v in ['Basic realm="x"'])
    assert len(parse_challenges(values)) == 1


MALFORMED: list[Any] = [
    pytest.param('Bearer realm="abc', "unterminated quoted string", id="unterminated"),
    pytest.param('Bearer realm="abc\\', "unterminated quoted string", id="trailing-backslash"),
    pytest.param('Bearer realm="abc\\"', "unterminated quoted string", id="escaped-last-quote"),
    pytest.param('realm="x"', "before any auth scheme", id="param-without-scheme"),
    pytest.param(', realm="x", Bearer', "before any auth scheme", id="param-first-after-comma"),
    pytest.param('Bearer realm "x"', "expected '=' after parameter name 'realm'", id="no-equals"),
    pytest.param('Bearer realm="x" service="y"', "expected ','", id="missing-comma"),
    pytest.param('Bearer realm="a", service=', "has no value", id="no-value-at-end"),
    pytest.param('Bearer realm="a", service=, x="y"', "has no value", id="no-value"),
    pytest.param("Negotiate abc==, realm=x", "follows the token68", id="param-after-token68"),
    pytest.param('Bearer"x"', "expected a space after auth scheme", id="no-space-after-scheme"),
    pytest.param('="x"', "expected an auth scheme", id="leading-equals"),
    pytest.param('Bearer realm="a\x00b"', "control character", id="nul-in-quotes"),
    pytest.param('Bearer realm="a\\\x01"', "control character", id="escaped-control"),
    pytest.param("Bearer realm=a\x01", "expected ','", id="control-after-token"),
    pytest.param('Bearer realm="a"\r\n service="b"', "expected ','", id="obs-fold"),
    pytest.param('Bearer realm=a"b"', "expected ','", id="quote-inside-unquoted"),
    pytest.param("Bearer @", "expected a parameter or token68", id="junk-after-scheme"),
    pytest.param("\u00e9", "expected an auth scheme", id="non-ascii-scheme"),
]


@pytest.mark.parametrize(("header", "reason"), MALFORMED)
def test_malformed(header: str, reason: str) -> None:
    with pytest.raises(ChallengeParseError) as info:
        parse_challenges([header])
    assert reason in str(info.value)


def test_one_bad_value_fails_the_whole_parse() -> None:
    with pytest.raises(ChallengeParseError):
        parse_challenges(['Bearer realm="a"', 'Basic realm="unterminated'])


def test_each_value_starts_a_new_list() -> None:
    # A parameter cannot continue the previous header value's challenge.
    with pytest.raises(ChallengeParseError, match="before any auth scheme"):
        parse_challenges(['Bearer realm="a"', 'service="b"'])


def test_header_length_limit() -> None:
    limit_value = 'Bearer realm="' + "a" * (MAX_HEADER_LENGTH - 15) + '"'
    assert len(limit_value) == MAX_HEADER_LENGTH
    assert parse_challenges([limit_value])[0].realm == "a" * (MAX_HEADER_LENGTH - 15)
    with pytest.raises(ChallengeParseError, match="longer than 8192"):
        parse_challenges([limit_value + " "])


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="' + "x" * 5000,
        "Bearer " + "x" * 5000 + ' "',
        "\x00" * 5000,
        'Bearer realm="a", ' + "y" * 5000 + "=",
        "Bearer realm=" + "z" * 5000 + "\x01",
    ],
    ids=["unterminated", "no-equals", "control", "no-value", "control-in-value"],
)
def test_error_messages_echo_little_input(header: str) -> None:
    with pytest.raises(ChallengeParseError) as info:
        parse_challenges([header])
    message = str(info.value)
    assert len(message) < 250
    assert "x" * 101 not in message and "y" * 101 not in message and "z" * 101 not in message


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="' + "\\a" * 4000 + '"',
        'Bearer realm="' + "\\" * 8000,
        "a," * 4000,
        "a " * 4000,
        "Bearer " + "a=b," * 2000,
        "Bearer " + "=" * 8000,
        "Negotiate " + "a" * 4000 + "=" * 4000,
        "Bearer realm=" + "=" * 8000,
    ],
)
def test_adversarial_input_is_fast(header: str) -> None:
    started = time.perf_counter()
    with contextlib.suppress(ChallengeParseError):
        parse_challenges([header[:MAX_HEADER_LENGTH]] * 10)
    assert time.perf_counter() - started < 1.0


def test_challenge_count_is_capped_across_header_values() -> None:
    at_cap = ["Basic"] * MAX_CHALLENGES
    assert len(parse_challenges(at_cap)) == MAX_CHALLENGES
    with pytest.raises(ChallengeParseError, match=f"more than {MAX_CHALLENGES} challenges"):
        parse_challenges([", ".join(at_cap), "Bearer"])
    with pytest.raises(ChallengeParseError, match=f"more than {MAX_CHALLENGES} challenges"):
        parse_challenges(["a," * 4000])


def test_parameter_count_is_capped_duplicates_included() -> None:
    at_cap = "Bearer " + ",".join(f"p{i}=v" for i in range(MAX_PARAMS))
    assert len(parse_challenges(at_cap)[0].params) == MAX_PARAMS
    with pytest.raises(ChallengeParseError, match=f"more than {MAX_PARAMS} parameters"):
        parse_challenges(at_cap + ",extra=v")
    # Repeating one name is the same work as new names: counted too.
    with pytest.raises(ChallengeParseError, match=f"more than {MAX_PARAMS} parameters"):
        parse_challenges("Bearer " + "a=b," * 2000)


# ---------------------------------------------------------------------- Challenge and preference


def test_challenge_is_immutable_hashable_and_normalised() -> None:
    params = {"Realm": "a", "realm": "ignored", "Service": "b"}
    challenge = Challenge("BEARER", params)
    params["realm"] = "changed"  # the challenge keeps its own copy
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {"realm": "a", "service": "b"}
    with pytest.raises(TypeError):
        challenge.params["realm"] = "x"  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        challenge.scheme = "basic"  # type: ignore[misc]
    parsed = parse_challenges(['Bearer realm="a", service="b"'])[0]
    assert parsed == challenge
    assert hash(parsed) == hash(challenge)
    assert len({parsed, challenge, Challenge("basic")}) == 2
    assert Challenge("bearer") != Challenge("bearer", {"realm": "a"})


PREFERENCE: list[Any] = [
    pytest.param('Basic realm="b", Bearer realm="a"', "bearer", "a", id="bearer-over-basic"),
    pytest.param('Bearer realm="a", Basic realm="b"', "bearer", "a", id="bearer-first"),
    pytest.param('Negotiate x, Basic realm="b"', "basic", "b", id="basic-over-unknown"),
    pytest.param('Digest realm="d", Negotiate x', None, None, id="neither"),
    pytest.param('Bearer realm="1", Bearer realm="2"', "bearer", "1", id="first-bearer"),
    pytest.param('BASIC realm="Sonatype Nexus Repository Manager"', "basic", None, id="nexus"),
    pytest.param("", None, None, id="nothing"),
]


@pytest.mark.parametrize(("header", "scheme", "realm"), PREFERENCE)
def test_preferred_challenge(header: str, scheme: str | None, realm: str | None) -> None:
    chosen = preferred_challenge(parse_challenges([header]))
    if scheme is None:
        assert chosen is None
    else:
        assert chosen is not None
        assert chosen.scheme == scheme
        if realm is not None:
            assert chosen.realm == realm


# ---------------------------------------------------------------------- properties


def _check_invariants(challenges: list[Challenge]) -> None:
    for challenge in challenges:
        assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
        assert all(key == key.lower() for key in challenge.params)
        assert not (challenge.params and challenge.token68 is not None)


@FUZZ
@given(st.lists(st.text(max_size=200), max_size=4))
def test_arbitrary_text_raises_only_parse_errors(values: list[str]) -> None:
    try:
        _check_invariants(parse_challenges(values))
    except ChallengeParseError as exc:
        assert len(str(exc)) < 250


_FRAGMENTS = st.sampled_from(
    [
        "Bearer",
        "basic",
        "Negotiate",
        "realm",
        "service",
        "scope",
        "=",
        "==",
        '"',
        '\\"',
        "\\",
        ",",
        " ",
        "\t",
        "abc",
        "https://x/t",
        "a+b/c",
        ":",
        "\x00",
        "\x7f",
        "\u00e9",
        "\r\n",
        "@",
    ]
)


@FUZZ
@given(st.lists(st.lists(_FRAGMENTS, max_size=30).map("".join), max_size=3))
def test_grammar_alphabet_raises_only_parse_errors(values: list[str]) -> None:
    try:
        _check_invariants(parse_challenges(values))
    except ChallengeParseError as exc:
        assert len(str(exc)) < 250


_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN = st.text(alphabet=_TCHARS, min_size=1, max_size=10)
_TOKEN68 = st.from_regex(r"[A-Za-z0-9\-._~+/]{1,20}={0,2}", fullmatch=True)
_UNQUOTED_VALUE = st.text(alphabet=_TCHARS + ":/", min_size=1, max_size=20)
_QUOTED_VALUE = st.text(
    alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"], include_characters="\t"),
    max_size=20,
)
_OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def _challenge_lists(draw: st.DrawFn) -> tuple[list[str], Expected]:
    """Challenges and a rendering of them into one or more header values."""
    expected: Expected = []
    rendered: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        scheme = draw(_TOKEN)
        kind = draw(st.sampled_from(["none", "token68", "params"]))
        if kind == "token68":
            token68 = draw(_TOKEN68)
            expected.append((scheme.lower(), {}, token68))
            gap = draw(st.sampled_from([" ", "  ", " \t"]))
            rendered.append(f"{scheme}{gap}{token68}")
            continue
        params: dict[str, str] = {}
        items: list[str] = []
        if kind == "params":
            names = draw(st.lists(_TOKEN, min_size=1, max_size=4, unique_by=str.lower))
            for name in names:
                if draw(st.booleans()):
                    value = draw(_QUOTED_VALUE)
                    extra = draw(st.lists(st.booleans(), min_size=len(value), max_size=len(value)))
                    escaped = "".join(
                        "\\" + ch if ch in '"\\' or also else ch
                        for ch, also in zip(value, extra, strict=True)
                    )
                    text = f'"{escaped}"'
                else:
                    value = draw(_UNQUOTED_VALUE)
                    text = value
                params[name.lower()] = value
                items.append(f"{name}{draw(_OWS)}={draw(_OWS)}{text}")
        expected.append((scheme.lower(), params, None))
        separator = draw(_OWS) + draw(st.sampled_from([",", ",", ", ,", ",,"])) + draw(_OWS)
        rendered.append(f"{scheme} {separator.join(items)}" if items else scheme)
    values: list[str] = []
    current: list[str] = []
    for piece in rendered:
        current.append(piece)
        if draw(st.booleans()):
            values.append(", ".join(current))
            current = []
    if current:
        values.append(", ".join(current))
    return values, expected


@FUZZ
@given(_challenge_lists())
def test_rendered_challenges_parse_back(case: tuple[list[str], Expected]) -> None:
    values, expected = case
    assert _shape(parse_challenges(values)) == expected


@FUZZ
@given(_challenge_lists())
def test_parsed_params_are_read_only(case: tuple[list[str], Expected]) -> None:
    for challenge in parse_challenges(case[0]):
        assert isinstance(challenge.params, Mapping)
        with pytest.raises(TypeError):
            challenge.params["x"] = "y"  # type: ignore[index]
