"""The OCI distribution API path grammar: which endpoint, repository and reference a path names.

Paths are relative to ``/v2/`` (one leading ``/`` is tolerated). The grammar is
the distribution spec's:

* name: components ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` joined by ``/``, at most 255 characters
* tag: ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``
* digest: ``algorithm:encoded``, algorithm ``[a-z0-9]+([+._-][a-z0-9]+)*``, encoded
  ``[a-zA-Z0-9=_-]+``; sha256 and sha512 need exactly 64 and 128 lower-case hex digits

A name may itself contain segments spelled like endpoints
(``a/manifests/b/manifests/latest`` is name ``a/manifests/b``), so the endpoint
is read from the right. Names are checked by a linear scanner rather than the
spec's regular expression, whose nested ``-+`` backtracks badly on input such as
``a-----...!``. Every :class:`PathError` message says what is wrong, echoes at
most 100 characters of input, and is safe to return to a caller.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "Endpoint",
    "PathError",
    "RegistryPath",
    "check_actions",
    "parse_path",
    "parse_path_or_repository",
    "pull_scope",
]

MAX_PATH_LENGTH = 2048
MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128
ACTIONS = ("pull", "push", "delete", "*")

_ECHO = 100  # input characters echoed in an error message, at most

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATOR_RUN = re.compile(r"[._-]+")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Components separated by single characters from a disjoint class: no backtracking to speak of.
_ALGORITHM = re.compile(r"[a-z0-9]++(?:[+._-][a-z0-9]++)*+")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]++")
_LOWER_HEX = re.compile(r"[0-9a-f]++")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_WHITESPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ENDPOINT_FORMS = (
    "<name>/manifests/<reference>, <name>/blobs/<digest>, <name>/tags/list "
    "or <name>/referrers/<digest>"
)


class PathError(ValueError):
    """A path or scope request outside the grammar; the message is the reason, safe to return."""


class Endpoint(enum.Enum):
    ROOT = "root"
    REPOSITORY = "repository"
    MANIFESTS = "manifests"
    BLOBS = "blobs"
    TAGS_LIST = "tags/list"
    REFERRERS = "referrers"


@dataclass(frozen=True, slots=True)
class RegistryPath:
    """A validated registry API path; constructing one with invalid parts raises PathError."""

    endpoint: Endpoint
    repository: str | None
    reference: str | None

    def __post_init__(self) -> None:
        endpoint = self.endpoint
        if endpoint is Endpoint.ROOT:
            if self.repository is not None or self.reference is not None:
                raise PathError("the API root has no repository or reference")
            return
        if self.repository is None:
            raise PathError(f"endpoint {endpoint.value!r} needs a repository name")
        _check_name(self.repository)
        if endpoint in (Endpoint.REPOSITORY, Endpoint.TAGS_LIST):
            if self.reference is not None:
                raise PathError(f"endpoint {endpoint.value!r} takes no reference")
            return
        if self.reference is None:
            what = "a tag or digest" if endpoint is Endpoint.MANIFESTS else "a digest"
            raise PathError(f"endpoint {endpoint.value!r} needs {what}")
        if endpoint is Endpoint.MANIFESTS:
            _check_reference(self.reference)
        else:
            if ":" not in self.reference:
                raise PathError(
                    f"{endpoint.value} need a digest (<algorithm>:<hex>), "
                    f"not tag {_quote(self.reference)}"
                )
            _check_digest(self.reference)

    @property
    def api_path(self) -> str:
        """The path below ``/v2/``, without a leading slash; ``""`` for the root.

        For REPOSITORY it is the bare name, which is not an API endpoint.
        """
        endpoint = self.endpoint
        if endpoint is Endpoint.ROOT:
            return ""
        if endpoint is Endpoint.REPOSITORY:
            return f"{self.repository}"
        if endpoint is Endpoint.TAGS_LIST:
            return f"{self.repository}/tags/list"
        return f"{self.repository}/{endpoint.value}/{self.reference}"

    @property
    def is_manifest(self) -> bool:
        return self.endpoint is Endpoint.MANIFESTS

    @property
    def reference_is_digest(self) -> bool:
        # Tags cannot contain ':'; a validated reference with one is a digest.
        return self.reference is not None and ":" in self.reference


@functools.lru_cache(maxsize=4096)  # the hot path asks about the same few paths again and again
def parse_path(path: str) -> RegistryPath:
    """Parse an API path below ``/v2/``: the root, or a manifests/blobs/tags/referrers endpoint."""
    segments = _segments(path)
    if not segments:
        return RegistryPath(Endpoint.ROOT, None, None)
    parsed = _endpoint(segments)
    if parsed is not None:
        return parsed
    raise PathError(_no_endpoint_reason(segments))


@functools.lru_cache(maxsize=4096)
def parse_path_or_repository(value: str) -> RegistryPath:
    """As :func:`parse_path`, but a bare repository name gives ``Endpoint.REPOSITORY``.

    Endpoint forms win: ``a/manifests/latest`` is a manifest of ``a``, never
    the repository ``a/manifests/latest``.
    """
    segments = _segments(value)
    if not segments:
        return RegistryPath(Endpoint.ROOT, None, None)
    parsed = _endpoint(segments)
    if parsed is not None:
        return parsed
    return RegistryPath(Endpoint.REPOSITORY, "/".join(segments), None)


def pull_scope(path: RegistryPath, actions: Sequence[str] = ()) -> str | None:
    """The token scope ``repository:<name>:<actions>`` for a path; None for the API root.

    ``actions`` defaults to ``pull``; each must be one of pull, push, delete or
    ``*``. Duplicates are dropped, order is kept. A bare string is one action.
    """
    chosen = check_actions(actions)
    if path.repository is None:
        return None
    return f"repository:{path.repository}:{','.join(chosen or ('pull',))}"


def check_actions(actions: Sequence[str]) -> tuple[str, ...]:
    """The requested token actions, each one of pull, push, delete or ``*``, without duplicates.

    Checked before any network call, whatever auth scheme the upstream turns out to use.
    """
    if isinstance(actions, str):
        actions = (actions,)
    chosen: list[str] = []
    for action in actions:
        if action not in ACTIONS:
            raise PathError(f"unknown action {_quote(action)}; expected pull, push, delete or *")
        if action not in chosen:
            chosen.append(action)
    return tuple(chosen)


# ---------------------------------------------------------------------- helpers


def _segments(path: str) -> list[str]:
    """Character-level and segment-level checks; the segments of a non-root path."""
    if len(path) > MAX_PATH_LENGTH:
        raise PathError(f"path is longer than {MAX_PATH_LENGTH} characters ({len(path)})")
    if _WHITESPACE_OR_CONTROL.search(path):
        raise PathError("whitespace and control characters are not allowed in a path")
    if "?" in path or "#" in path:
        raise PathError("query strings and fragments ('?', '#') are not allowed in a path")
    if "%" in path:
        raise PathError("percent-encoding ('%') is not allowed in a path")
    if _NON_ASCII.search(path):
        raise PathError("non-ASCII characters are not allowed in a path")
    if path.startswith("/"):
        path = path[1:]
    if not path:
        return []
    segments = path.split("/")
    if ".." in segments:
        raise PathError("'..' is not allowed in a path")
    if "." in segments:
        raise PathError("'.' is not allowed as a path segment")
    if segments[-1] == "" and len(segments) > 1 and all(segments[:-1]):
        raise PathError(f"trailing '/' is not allowed in a path: {_quote(path)}")
    if "" in segments:
        raise PathError(f"empty path segment ('//') is not allowed: {_quote(path)}")
    return segments


def _endpoint(segments: list[str]) -> RegistryPath | None:
    """The endpoint named by the last segments, or None when they name none."""
    if len(segments) < 3:
        return None
    name = "/".join(segments[:-2])
    kind, last = segments[-2], segments[-1]
    if kind == "tags" and last == "list":
        return RegistryPath(Endpoint.TAGS_LIST, name, None)
    if kind == "manifests":
        return RegistryPath(Endpoint.MANIFESTS, name, last)
    if kind == "blobs":
        return RegistryPath(Endpoint.BLOBS, name, last)
    if kind == "referrers":
        return RegistryPath(Endpoint.REFERRERS, name, last)
    return None


def _no_endpoint_reason(segments: list[str]) -> str:
    last = segments[-1]
    if last in ("manifests", "blobs", "referrers"):
        what = "tag or digest" if last == "manifests" else "digest"
        return f"missing {what} after '{last}'; expected {_ENDPOINT_FORMS}"
    if last == "tags":
        return "missing 'list' after 'tags'; the tags endpoint is <name>/tags/list"
    if len(segments) >= 3:
        kind = segments[-2]
        if kind == "tags":
            kind = f"tags/{last}"
        return f"unknown endpoint {_quote(kind)}; expected manifests, blobs, tags/list or referrers"
    return f"{_quote('/'.join(segments))} names no endpoint; expected {_ENDPOINT_FORMS}"


def _check_name(name: str) -> None:
    """Validate a repository name with a linear scan (no backtracking regex)."""
    if not name:
        raise PathError("repository name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise PathError(
            f"repository name is longer than {MAX_NAME_LENGTH} characters ({len(name)})"
        )
    for char in name:
        if char not in _NAME_CHARS:
            if "A" <= char <= "Z":
                continue  # reported below, once every character is known to be plausible
            raise PathError(
                f"repository name {_quote(name)} contains {_describe(char)}; allowed are "
                "a-z, 0-9, '.', '_', '-' and '/' between components"
            )
    if name != name.lower():
        raise PathError(f"repository name {_quote(name)} must be lower-case")
    for component in name.split("/"):
        if not component:
            raise PathError(f"repository name {_quote(name)} has an empty component")
        if component[0] not in _ALNUM or component[-1] not in _ALNUM:
            raise PathError(
                f"repository name component {_quote(component)} must start and end with a "
                "letter or digit"
            )
        for run in _SEPARATOR_RUN.finditer(component):
            separator = run.group()
            if separator not in (".", "_", "__") and separator != "-" * len(separator):
                raise PathError(
                    f"repository name component {_quote(component)} has separator "
                    f"{_quote(separator)}; components are joined by '.', '_', '__' or dashes"
                )


def _check_reference(reference: str) -> None:
    if ":" in reference:
        _check_digest(reference)
    else:
        _check_tag(reference)


def _check_tag(tag: str) -> None:
    if len(tag) > MAX_TAG_LENGTH:
        raise PathError(f"tag is longer than {MAX_TAG_LENGTH} characters ({len(tag)})")
    if _TAG.fullmatch(tag) is None:
        raise PathError(
            f"invalid tag {_quote(tag)}: a tag is letters, digits, '_', '.' and '-', "
            "and must not start with '.' or '-'"
        )


def _check_digest(digest: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    if not algorithm or not encoded:
        raise PathError(f"invalid digest {_quote(digest)}: expected <algorithm>:<encoded>")
    if _ALGORITHM.fullmatch(algorithm) is None:
        raise PathError(
            f"invalid digest {_quote(digest)}: bad algorithm {_quote(algorithm)} "
            "(lower-case letters and digits, separated by '+', '.', '_' or '-')"
        )
    if _ENCODED.fullmatch(encoded) is None:
        raise PathError(
            f"invalid digest {_quote(digest)}: the encoded part may only contain "
            "letters, digits, '=', '_' and '-'"
        )
    hex_length = _HEX_LENGTHS.get(algorithm)
    if hex_length is not None and (
        len(encoded) != hex_length or _LOWER_HEX.fullmatch(encoded) is None
    ):
        raise PathError(
            f"invalid digest {_quote(digest)}: {algorithm} needs exactly {hex_length} "
            "lower-case hex digits"
        )


def _describe(char: str) -> str:
    if char == ":":
        return "':' (a registry host or port does not belong in the path)"
    if char == "@":
        return "'@' (write <name>/manifests/<digest>, not <name>@<digest>)"
    return repr(char)


def _quote(value: str) -> str:
    """Quote input for an error message: at most _ECHO characters, non-printables escaped."""
    clipped = value[:_ECHO]
    shown = clipped if clipped.isprintable() else clipped.encode("unicode_escape").decode("ascii")
    return f"'{shown}{'...' if len(value) > _ECHO else ''}'"
