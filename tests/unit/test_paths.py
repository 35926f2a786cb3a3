"""The OCI distribution path grammar: endpoints, names, tags, digests, scopes, and fuzzing."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vregistry_server.oci.paths import (
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    Endpoint,
    PathError,
    RegistryPath,
    parse_path,
    parse_path_or_repository,
    pull_scope,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


# ---------------------------------------------------------------------- valid paths

VALID: list[Any] = [
    pytest.param("", Endpoint.ROOT, None, None, "", id="root-empty"),
    pytest.param("/", Endpoint.ROOT, None, None, "", id="root-slash"),
    pytest.param(
        "library/alpine/manifests/latest",
        Endpoint.MANIFESTS,
        "library/alpine",
        "latest",
        "library/alpine/manifests/latest",
        id="seed-manifest",
    ),
    pytest.param(
        "nginx/nginx/tags/list",
        Endpoint.TAGS_LIST,
        "nginx/nginx",
        None,
        "nginx/nginx/tags/list",
        id="seed-tags-list",
    ),
    pytest.param(
        "/library/alpine/manifests/3.19",
        Endpoint.MANIFESTS,
        "library/alpine",
        "3.19",
        "library/alpine/manifests/3.19",
        id="leading-slash-dropped",
    ),
    pytest.param(
        f"library/alpine/manifests/{SHA256}",
        Endpoint.MANIFESTS,
        "library/alpine",
        SHA256,
        f"library/alpine/manifests/{SHA256}",
        id="manifest-by-digest",
    ),
    pytest.param(
        f"a/blobs/{SHA256}", Endpoint.BLOBS, "a", SHA256, f"a/blobs/{SHA256}", id="blob-sha256"
    ),
    pytest.param(
        f"a/blobs/{SHA512}", Endpoint.BLOBS, "a", SHA512, f"a/blobs/{SHA512}", id="blob-sha512"
    ),
    pytest.param(
        "a/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        Endpoint.BLOBS,
        "a",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "a/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        id="blob-other-algorithm",
    ),
    pytest.param(
        f"a/b/referrers/{SHA256}",
        Endpoint.REFERRERS,
        "a/b",
        SHA256,
        f"a/b/referrers/{SHA256}",
        id="referrers",
    ),
    pytest.param(
        "a/manifests/b/manifests/latest",
        Endpoint.MANIFESTS,
        "a/manifests/b",
        "latest",
        "a/manifests/b/manifests/latest",
        id="name-with-endpoint-segments",
    ),
    pytest.param(
        "tags/list/tags/list",
        Endpoint.TAGS_LIST,
        "tags/list",
        None,
        "tags/list/tags/list",
        id="name-is-tags-list",
    ),
    pytest.param(
        "blobs/manifests/manifests",
        Endpoint.MANIFESTS,
        "blobs",
        "manifests",
        "blobs/manifests/manifests",
        id="tag-named-manifests",
    ),
    pytest.param(
        "my-org/my__app.v2/x--y_z/manifests/_Tag.With-Everything_123",
        Endpoint.MANIFESTS,
        "my-org/my__app.v2/x--y_z",
        "_Tag.With-Everything_123",
        "my-org/my__app.v2/x--y_z/manifests/_Tag.With-Everything_123",
        id="all-separators",
    ),
    pytest.param(
        "a/manifests/v1..2",
        Endpoint.MANIFESTS,
        "a",
        "v1..2",
        "a/manifests/v1..2",
        id="double-dot-inside-a-tag",
    ),
    pytest.param(
        "a/manifests/" + "T" * 128,
        Endpoint.MANIFESTS,
        "a",
        "T" * 128,
        "a/manifests/" + "T" * 128,
        id="longest-tag",
    ),
    pytest.param(
        "a" * MAX_NAME_LENGTH + "/tags/list",
        Endpoint.TAGS_LIST,
        "a" * MAX_NAME_LENGTH,
        None,
        "a" * MAX_NAME_LENGTH + "/tags/list",
        id="longest-name",
    ),
]


@pytest.mark.parametrize(("path", "endpoint", "repository", "reference", "api_path"), VALID)
def test_parse_path(
    path: str, endpoint: Endpoint, repository: str | None, reference: str | None, api_path: str
) -> None:
    for parser in (parse_path, parse_path_or_repository):
        parsed = parser(path)
        assert parsed == RegistryPath(endpoint, repository, reference)
        assert parsed.api_path == api_path
        assert parsed.is_manifest == (endpoint is Endpoint.MANIFESTS)
        assert parsed.reference_is_digest == (reference is not None and ":" in reference)


# ---------------------------------------------------------------------- invalid paths

INVALID: list[Any] = [
    pytest.param(
        "Library/alpine/manifests/latest",
        "repository name 'Library/alpine' must be lower-case",
        id="upper-case-name",
    ),
    pytest.param("a/../b/manifests/x", "'..' is not allowed in a path", id="dot-dot"),
    pytest.param("../a/tags/list", "'..' is not allowed in a path", id="leading-dot-dot"),
    pytest.param("a/manifests/..", "'..' is not allowed in a path", id="dot-dot-reference"),
    pytest.param("a/./tags/list", "'.' is not allowed", id="dot-segment"),
    pytest.param("a//b/tags/list", "'//'", id="double-slash"),
    pytest.param("//a/tags/list", "'//'", id="two-leading-slashes"),
    pytest.param("a/tags/list/", "trailing '/'", id="trailing-slash"),
    pytest.param("a/manifests/latest?x=1", "query strings", id="query"),
    pytest.param("a/manifests/latest#frag", "fragments", id="fragment"),
    pytest.param("a%2Fb/tags/list", "percent-encoding", id="percent-encoded-slash"),
    pytest.param("a/manifests/%2e%2e", "percent-encoding", id="percent-encoded-dots"),
    pytest.param("a b/tags/list", "whitespace", id="space"),
    pytest.param("a/tags/list\n", "whitespace", id="newline"),
    pytest.param("a/tags/list\x00", "control", id="nul"),
    pytest.param("a\u00a0b/tags/list", "whitespace", id="nbsp"),
    pytest.param("caf\u00e9/tags/list", "non-ASCII", id="non-ascii"),
    pytest.param(
        "a/foo/bar",
        "unknown endpoint 'foo'; expected manifests, blobs, tags/list or referrers",
        id="unknown-endpoint",
    ),
    pytest.param("a/Manifests/latest", "unknown endpoint 'Manifests'", id="endpoint-case"),
    pytest.param("a/tags/lists", "unknown endpoint 'tags/lists'", id="tags-not-list"),
    pytest.param("library/alpine", "names no endpoint", id="bare-repository"),
    pytest.param("alpine", "names no endpoint", id="bare-single-name"),
    pytest.param("a/manifests", "missing tag or digest after 'manifests'", id="no-reference"),
    pytest.param("a/blobs", "missing digest after 'blobs'", id="no-digest"),
    pytest.param("a/referrers", "missing digest after 'referrers'", id="referrers-no-digest"),
    pytest.param("a/tags", "missing 'list' after 'tags'", id="tags-without-list"),
    pytest.param("a/blobs/latest", "blobs need a digest", id="blob-by-tag"),
    pytest.param("a/referrers/latest", "referrers need a digest", id="referrers-by-tag"),
    pytest.param("a/blobs/sha256:abc", "sha256 needs exactly 64", id="short-sha256"),
    pytest.param(f"a/blobs/{SHA256}0", "sha256 needs exactly 64", id="long-sha256"),
    pytest.param(f"a/blobs/{SHA256.upper()}", "bad algorithm 'SHA256'", id="upper-algorithm"),
    pytest.param("a/blobs/sha256:" + "A" * 64, "lower-case hex", id="upper-hex"),
    pytest.param("a/blobs/sha256:" + "g" * 64, "lower-case hex", id="non-hex"),
    pytest.param("a/blobs/sha512:" + "a" * 64, "sha512 needs exactly 128", id="short-sha512"),
    pytest.param("a/blobs/:abc", "expected <algorithm>:<encoded>", id="no-algorithm"),
    pytest.param("a/blobs/sha256:", "expected <algorithm>:<encoded>", id="no-encoded"),
    pytest.param("a/blobs/foo+:abc", "bad algorithm", id="algorithm-trailing-separator"),
    pytest.param("a/blobs/foo:ab+c", "encoded part", id="bad-encoded"),
    pytest.param("a/blobs/foo:a:b", "encoded part", id="two-colons"),
    pytest.param("a/manifests/-latest", "invalid tag '-latest'", id="tag-leading-dash"),
    pytest.param("a/manifests/.latest", "invalid tag '.latest'", id="tag-leading-dot"),
    pytest.param("a/manifests/la+test", "invalid tag", id="tag-bad-char"),
    pytest.param("a/manifests/" + "t" * 129, "tag is longer than 128", id="tag-too-long"),
    pytest.param("a" * 256 + "/tags/list", "longer than 255", id="name-too-long"),
    pytest.param("x" * 2049, "longer than 2048", id="path-too-long"),
    pytest.param(
        "a-/tags/list", "must start and end with a letter or digit", id="name-trailing-dash"
    ),
    pytest.param(
        "_a/tags/list", "must start and end with a letter or digit", id="name-leading-sep"
    ),
    pytest.param("a.-b/tags/list", "separator '.-'", id="mixed-separator"),
    pytest.param("a___b/tags/list", "separator '___'", id="triple-underscore"),
    pytest.param("a..b/tags/list", "separator '..'", id="double-dot-in-name"),
    pytest.param("localhost:5000/a/tags/list", "registry host or port", id="host-in-path"),
    pytest.param("a@sha256:abc/tags/list", "'@'", id="at-digest"),
    pytest.param("a!/tags/list", "contains '!'", id="bang"),
    pytest.param("a\\b/tags/list", "contains", id="backslash"),
]


@pytest.mark.parametrize(("path", "reason"), INVALID)
def test_parse_path_rejects(path: str, reason: str) -> None:
    with pytest.raises(PathError) as info:
        parse_path(path)
    assert reason in str(info.value)


def test_upper_case_message_is_exact() -> None:
    with pytest.raises(PathError) as info:
        parse_path_or_repository("Library/alpine")
    assert str(info.value) == "repository name 'Library/alpine' must be lower-case"


@pytest.mark.parametrize(
    "path",
    [
        "A" * 300 + "/tags/list",
        "a/manifests/" + "!" * 1500,
        "a/blobs/sha256:" + "Z" * 1500,
        "a/blobs/" + "X" * 1500 + ":y",
        "a/" + "b" * 1500 + "/c",
        "a" * 2000,
        "a" + "-" * 1500 + "!/tags/list",
        "a\x00" * 1000,
    ],
)
def test_error_messages_echo_at_most_100_characters(path: str) -> None:
    with pytest.raises(PathError) as info:
        parse_path(path)
    message = str(info.value)
    assert len(message) < 400
    for char in "AbX!Z":
        assert char * 101 not in message


# ---------------------------------------------------------------------- repositories and scopes

REPOSITORIES: list[Any] = [
    pytest.param("library/alpine", Endpoint.REPOSITORY, "library/alpine", id="repository"),
    pytest.param("/library/alpine", Endpoint.REPOSITORY, "library/alpine", id="leading-slash"),
    pytest.param("alpine", Endpoint.REPOSITORY, "alpine", id="single-component"),
    pytest.param("library/manifests", Endpoint.REPOSITORY, "library/manifests", id="keyword-last"),
    pytest.param("a/b/c/d/e", Endpoint.REPOSITORY, "a/b/c/d/e", id="deep"),
    pytest.param(
        "library/alpine/manifests/latest", Endpoint.MANIFESTS, "library/alpine", id="path"
    ),
    pytest.param("a/manifests/latest", Endpoint.MANIFESTS, "a", id="endpoint-form-wins"),
    pytest.param("", Endpoint.ROOT, None, id="root"),
]


@pytest.mark.parametrize(("value", "endpoint", "repository"), REPOSITORIES)
def test_parse_path_or_repository(value: str, endpoint: Endpoint, repository: str | None) -> None:
    parsed = parse_path_or_repository(value)
    assert parsed.endpoint is endpoint
    assert parsed.repository == repository
    if endpoint is Endpoint.REPOSITORY:
        assert parsed.reference is None
        assert parsed.api_path == repository
        assert not parsed.is_manifest and not parsed.reference_is_digest


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Library/alpine", "must be lower-case"),
        ("a//b", "'//'"),
        ("a/b/", "trailing '/'"),
        ("a/../b", "'..'"),
        ("a/blobs/latest", "blobs need a digest"),
        ("registry.example.com:5000/a", "registry host or port"),
        ("a?b", "query strings"),
    ],
)
def test_parse_path_or_repository_rejects(value: str, reason: str) -> None:
    with pytest.raises(PathError) as info:
        parse_path_or_repository(value)
    assert reason in str(info.value)


SCOPES: list[Any] = [
    pytest.param(
        "library/alpine/manifests/latest", (), "repository:library/alpine:pull", id="default"
    ),
    pytest.param("nginx/nginx/tags/list", (), "repository:nginx/nginx:pull", id="tags-list"),
    pytest.param(f"a/blobs/{SHA256}", ["pull"], "repository:a:pull", id="blob"),
    pytest.param("a/b", ["pull", "push"], "repository:a/b:pull,push", id="repository-push"),
    pytest.param("a", ["push", "pull", "push"], "repository:a:push,pull", id="dedupe-keeps-order"),
    pytest.param("a", ["*"], "repository:a:*", id="star"),
    pytest.param("a", ["delete"], "repository:a:delete", id="delete"),
    pytest.param("a", "push", "repository:a:push", id="bare-string-is-one-action"),
    pytest.param("", (), None, id="root"),
    pytest.param("/", ["push"], None, id="root-with-actions"),
]


@pytest.mark.parametrize(("value", "actions", "scope"), SCOPES)
def test_pull_scope(value: str, actions: Any, scope: str | None) -> None:
    assert pull_scope(parse_path_or_repository(value), actions) == scope


@pytest.mark.parametrize(
    "actions", [["pul"], ["pull", "PULL"], [""], ["pull", "admin"], ["pull,push"]]
)
def test_pull_scope_rejects_unknown_actions(actions: list[str]) -> None:
    with pytest.raises(PathError, match="unknown action"):
        pull_scope(parse_path("a/tags/list"), actions)
    with pytest.raises(PathError, match="unknown action"):
        pull_scope(parse_path(""), actions)


# ---------------------------------------------------------------------- RegistryPath itself


@pytest.mark.parametrize(
    ("endpoint", "repository", "reference", "reason"),
    [
        (Endpoint.ROOT, "a", None, "no repository"),
        (Endpoint.REPOSITORY, None, None, "needs a repository"),
        (Endpoint.REPOSITORY, "a", "latest", "takes no reference"),
        (Endpoint.TAGS_LIST, "a", "latest", "takes no reference"),
        (Endpoint.MANIFESTS, "a", None, "needs a tag or digest"),
        (Endpoint.BLOBS, "a", None, "needs a digest"),
        (Endpoint.BLOBS, "a", "latest", "need a digest"),
        (Endpoint.MANIFESTS, "A", "latest", "lower-case"),
        (Endpoint.MANIFESTS, "a", "../x", "invalid tag"),
        (Endpoint.MANIFESTS, "a/../b", "latest", "must start and end"),
    ],
)
def test_registry_path_validates_its_parts(
    endpoint: Endpoint, repository: str | None, reference: str | None, reason: str
) -> None:
    with pytest.raises(PathError) as info:
        RegistryPath(endpoint, repository, reference)
    assert reason in str(info.value)


def test_registry_path_is_hashable() -> None:
    paths = {parse_path("a/tags/list"), parse_path("/a/tags/list"), parse_path("")}
    assert len(paths) == 2


# ---------------------------------------------------------------------- performance


@pytest.mark.parametrize(
    "value",
    [
        "a" + "-" * 5000 + "!",
        "a" + "-" * 2000 + "!",
        "a" + "-" * 200 + "!",
        ("a-" * 120 + "!") + "/tags/list",
        "a/" * 1000 + "!",
        "a/manifests/" + "a" * 2000,
        "a/blobs/" + "a+" * 1000 + ":x",
        "a/blobs/sha256:" + "=" * 2000,
    ],
)
def test_adversarial_input_is_fast(value: str) -> None:
    started = time.perf_counter()
    for _ in range(10):
        for parser in (parse_path, parse_path_or_repository):
            with contextlib.suppress(PathError):
                parser(value)
    assert time.perf_counter() - started < 1.0


def test_name_scanner_is_linear_beyond_the_length_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The public parsers cut long input off early; the name scanner must not depend on that.
    from vregistry_server.oci import paths

    monkeypatch.setattr(paths, "MAX_NAME_LENGTH", 10**6)
    started = time.perf_counter()
    for value in ("a" + "-" * 200_000 + "!", "a" + "-" * 200_000 + ".", "a-" * 100_000 + "."):
        with pytest.raises(PathError):
            RegistryPath(Endpoint.REPOSITORY, value, None)
    assert time.perf_counter() - started < 1.0


# ---------------------------------------------------------------------- properties

_ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "----"])
_COMPONENT = st.one_of(
    st.builds(
        lambda first, rest: first + "".join(sep + run for sep, run in rest),
        _ALNUM,
        st.lists(st.tuples(_SEPARATOR, _ALNUM), max_size=3),
    ),
    st.sampled_from(["manifests", "blobs", "tags", "list", "referrers"]),
)
_NAME = st.lists(_COMPONENT, min_size=1, max_size=6).map("/".join).filter(lambda n: len(n) <= 255)
_TAG = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", fullmatch=True)
_DIGEST = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map("sha256:".__add__),
    st.text(alphabet="0123456789abcdef", min_size=128, max_size=128).map("sha512:".__add__),
    st.tuples(
        st.from_regex(r"[a-z0-9]{1,8}([+._-][a-z0-9]{1,8}){0,3}", fullmatch=True).filter(
            lambda a: a not in ("sha256", "sha512")
        ),
        st.from_regex(r"[a-zA-Z0-9=_-]{1,100}", fullmatch=True),
    ).map(":".join),
)


@st.composite
def _valid_paths(draw: st.DrawFn) -> tuple[str, Endpoint, str, str | None]:
    name = draw(_NAME)
    endpoint = draw(
        st.sampled_from(
            [Endpoint.MANIFESTS, Endpoint.BLOBS, Endpoint.TAGS_LIST, Endpoint.REFERRERS]
        )
    )
    if endpoint is Endpoint.TAGS_LIST:
        return f"{name}/tags/list", endpoint, name, None
    reference = draw(st.one_of(_TAG, _DIGEST) if endpoint is Endpoint.MANIFESTS else _DIGEST)
    return f"{name}/{endpoint.value}/{reference}", endpoint, name, reference


@FUZZ
@given(_valid_paths(), st.booleans())
def test_valid_paths_round_trip(
    case: tuple[str, Endpoint, str, str | None], leading_slash: bool
) -> None:
    path, endpoint, name, reference = case
    parsed = parse_path(("/" if leading_slash else "") + path)
    assert parsed == RegistryPath(endpoint, name, reference)
    assert parsed.api_path == path
    assert parse_path_or_repository(path) == parsed
    assert pull_scope(parsed) == f"repository:{name}:pull"


@FUZZ
@given(_NAME)
def test_valid_names_round_trip(name: str) -> None:
    segments = name.split("/")
    ambiguous = len(segments) >= 3 and (
        segments[-2] in ("manifests", "blobs", "referrers") or segments[-2:] == ["tags", "list"]
    )
    assume(not ambiguous)
    parsed = parse_path_or_repository(name)
    assert parsed == RegistryPath(Endpoint.REPOSITORY, name, None)
    assert parsed.api_path == name
    assert pull_scope(parsed, ["push", "pull"]) == f"repository:{name}:push,pull"


def _check_parsed(parsed: RegistryPath) -> None:
    assert not parsed.api_path.startswith("/")
    assert len(parsed.api_path) <= MAX_PATH_LENGTH
    if parsed.endpoint is Endpoint.ROOT:
        assert parsed.api_path == "" and pull_scope(parsed) is None
    else:
        assert parsed.repository is not None
        assert parsed.repository == parsed.repository.lower()
        assert len(parsed.repository) <= MAX_NAME_LENGTH
        assert pull_scope(parsed) == f"repository:{parsed.repository}:pull"
    if parsed.endpoint is not Endpoint.REPOSITORY:
        assert parse_path(parsed.api_path) == parsed
    else:
        assert parse_path_or_repository(parsed.api_path) == parsed


def _parse_both(value: str) -> None:
    for parser in (parse_path, parse_path_or_repository):
        try:
            parsed = parser(value)
        except PathError as exc:
            assert len(str(exc)) < 400
        else:
            _check_parsed(parsed)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_path_errors(value: str) -> None:
    _parse_both(value)


_FRAGMENTS = st.sampled_from(
    [
        "a",
        "z9",
        "A",
        "_",
        "__",
        "-",
        ".",
        "..",
        "/",
        "//",
        ":",
        "+",
        "=",
        "sha256:",
        "sha512:",
        "0123456789abcdef" * 4,
        "manifests",
        "blobs",
        "tags",
        "list",
        "referrers",
        "latest",
        "?",
        "#",
        "%2F",
        " ",
        "\x00",
        "\u00e9",
        "@",
    ]
)


@FUZZ
@given(st.lists(_FRAGMENTS, max_size=25).map("".join))
def test_grammar_alphabet_raises_only_path_errors(value: str) -> None:
    _parse_both(value)


@FUZZ
@given(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=4))
def test_pull_scope_raises_only_path_errors(value: str, actions: list[str]) -> None:
    try:
        parsed = parse_path_or_repository(value)
        scope = pull_scope(parsed, actions)
    except PathError:
        return
    if scope is not None:
        granted = scope.rsplit(":", 1)[1].split(",")
        assert granted == list(dict.fromkeys(actions or ["pull"]))
