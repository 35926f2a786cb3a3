"""Parse ``WWW-Authenticate`` challenges (RFC 7235 section 4.1, RFC 9110 section 11).

A small hand-written scanner: every regular expression below is a single
character-class run, so scanning is linear in the input. It handles several
challenges in one header value and several header values, quoted strings with
backslash escapes, case-insensitive schemes and parameter names, optional
whitespace around ``=`` and ``,``, empty list elements, token68 credentials and
scheme-only challenges. It is lenient where registries are known to stray from
the grammar (unquoted values such as ``realm=https://host/token``) and strict
where the meaning would be a guess (unterminated quotes, parameters without a
scheme, missing commas): those raise :class:`ChallengeParseError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "MAX_CHALLENGES",
    "MAX_HEADER_LENGTH",
    "MAX_PARAMS",
    "Challenge",
    "ChallengeParseError",
    "parse_challenges",
    "preferred_challenge",
]

MAX_HEADER_LENGTH = 8192
"""Longest single header value accepted, in characters."""
MAX_CHALLENGES = 32
"""Most challenges accepted in one response; a registry sends one or two. A cap, so a hostile
upstream's 8 KB of ``a,a,a,…`` costs a parse error instead of thousands of objects per probe."""
MAX_PARAMS = 32
"""Most parameters accepted in one challenge (Bearer uses realm, service, scope, error...)."""

_SNIPPET = 30  # input characters echoed in an error message, at most

# token = 1*tchar (RFC 9110 section 5.6.2)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Lenient unquoted value: anything visible up to the next comma or whitespace.
_UNQUOTED = re.compile(r"[^ \t,\"\x00-\x1f\x7f]+")
# qdtext run: everything but DQUOTE, backslash and control characters (HTAB allowed).
_QDTEXT = re.compile(r"[^\"\\\x00-\x08\x0a-\x1f\x7f]+")
_CTL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))

_PREFERENCE = ("bearer", "basic")


class ChallengeParseError(ValueError):
    """A ``WWW-Authenticate`` value that does not follow the grammar; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One auth challenge: a lower-cased scheme and either parameters or a token68.

    ``params`` is a read-only mapping with lower-cased keys (the first of
    duplicate keys wins). It takes no part in the hash, so challenges are
    hashable; equality still compares it.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    token68: str | None = None

    def __post_init__(self) -> None:
        # Normalise whatever the caller passed into a private, read-only copy.
        normalised: dict[str, str] = {}
        for key, value in self.params.items():
            normalised.setdefault(key.lower(), value)
        object.__setattr__(self, "scheme", self.scheme.lower())
        object.__setattr__(self, "params", MappingProxyType(normalised))

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        """The RFC 6750 error code, e.g. ``insufficient_scope`` or ``invalid_token``."""
        return self.params.get("error")


def parse_challenges(header_values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values, in order.

    A bare string is taken as one header value (not as an iterable of
    characters). Empty values give no challenges. Raises
    :class:`ChallengeParseError` for malformed input or a value longer than
    :data:`MAX_HEADER_LENGTH`.
    """
    if isinstance(header_values, str):
        header_values = (header_values,)
    challenges: list[Challenge] = []
    for value in header_values:
        if len(value) > MAX_HEADER_LENGTH:
            raise ChallengeParseError(
                f"header value is longer than {MAX_HEADER_LENGTH} characters ({len(value)})"
            )
        _Scanner(value).parse_into(challenges)
    return challenges


def preferred_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """The first Bearer challenge, else the first Basic one, else None; other schemes are ignored."""
    for scheme in _PREFERENCE:
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


class _Builder:
    __slots__ = ("params", "scheme", "seen", "token68")

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.params: dict[str, str] = {}
        self.seen = 0  # parameters read, duplicates included (the cap counts work, not keys)
        self.token68: str | None = None

    def build(self) -> Challenge:
        return Challenge(self.scheme, self.params, self.token68)


class _Scanner:
    """Scans one header value: ``#challenge`` where params may continue a challenge's list."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def parse_into(self, out: list[Challenge]) -> None:
        text = self.text
        end = len(text)
        current: _Builder | None = None
        expect_param = False  # just after "scheme SP": the next element must be a parameter
        pos = 0
        while True:
            pos = self._skip_separators(pos)
            if pos >= end:
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                wanted = (
                    "a parameter or token68 after the auth scheme"
                    if expect_param
                    else "an auth scheme or parameter name"
                )
                raise self._error(f"expected {wanted}, found {text[pos]!r}", pos)
            name = match.group()
            after_name = match.end()
            eq = _skip_ows(text, after_name)
            if eq < end and text[eq] == "=":
                if current is None:
                    raise self._error(
                        f"parameter {_clip(name)!r} appears before any auth scheme", pos
                    )
                if current.token68 is not None:
                    raise self._error(
                        f"parameter {_clip(name)!r} follows the token68 of scheme "
                        f"{_clip(current.scheme)!r}",
                        pos,
                    )
                current.seen += 1
                if current.seen > MAX_PARAMS:
                    raise self._error(
                        f"scheme {_clip(current.scheme)!r} has more than {MAX_PARAMS} parameters",
                        pos,
                    )
                value, pos = self._value(name, eq + 1)
                current.params.setdefault(name.lower(), value)
                expect_param = False
            elif expect_param:
                raise self._error(f"expected '=' after parameter name {_clip(name)!r}", after_name)
            else:
                if current is not None:
                    out.append(current.build())
                if len(out) >= MAX_CHALLENGES:
                    raise self._error(f"more than {MAX_CHALLENGES} challenges", pos)
                current = _Builder(name.lower())
                pos, expect_param = self._after_scheme(current, after_name)
                if expect_param:
                    continue
            pos = _skip_ows(text, pos)
            if pos < end and text[pos] != ",":
                raise self._error(f"expected ',' but found {text[pos]!r}", pos)
        if current is not None:
            out.append(current.build())

    def _after_scheme(self, current: _Builder, pos: int) -> tuple[int, bool]:
        """Handle what follows a scheme: nothing, a token68, or the start of its parameters."""
        text = self.text
        end = len(text)
        if pos >= end or text[pos] == ",":
            return pos, False
        if text[pos] not in " \t":
            raise self._error(
                f"expected a space after auth scheme {_clip(current.scheme)!r}, "
                f"found {text[pos]!r}",
                pos,
            )
        pos = _skip_ows(text, pos)
        if pos >= end or text[pos] == ",":
            return pos, False
        match = _TOKEN68.match(text, pos)
        if match is not None:
            after = _skip_ows(text, match.end())
            if after >= end or text[after] == ",":
                current.token68 = match.group()
                return after, False
        return pos, True

    def _value(self, name: str, pos: int) -> tuple[str, int]:
        text = self.text
        pos = _skip_ows(text, pos)
        if pos < len(text) and text[pos] == '"':
            return self._quoted(pos)
        match = _UNQUOTED.match(text, pos)
        if match is None:
            raise self._error(f"parameter {_clip(name)!r} has no value", pos)
        return match.group(), match.end()

    def _quoted(self, start: int) -> tuple[str, int]:
        text = self.text
        end = len(text)
        parts: list[str] = []
        pos = start + 1
        while True:
            match = _QDTEXT.match(text, pos)
            if match is not None:
                parts.append(match.group())
                pos = match.end()
            if pos >= end:
                raise self._error("unterminated quoted string", start)
            char = text[pos]
            if char == '"':
                return "".join(parts), pos + 1
            if char == "\\":
                if pos + 1 >= end:
                    raise self._error("unterminated quoted string", start)
                escaped = text[pos + 1]
                if escaped in _CTL:
                    raise self._error("control character in quoted string", pos + 1)
                parts.append(escaped)
                pos += 2
            else:
                raise self._error("control character in quoted string", pos)

    def _skip_separators(self, pos: int) -> int:
        """Skip OWS and empty list elements (``, ,``) up to the next element."""
        text = self.text
        end = len(text)
        while pos < end and text[pos] in " \t,":
            pos += 1
        return pos

    def _error(self, reason: str, pos: int) -> ChallengeParseError:
        shown = repr(self.text[pos : pos + _SNIPPET])
        if len(shown) > 2 * _SNIPPET:  # escapes (control, non-Latin characters) lengthen it
            shown = shown[: 2 * _SNIPPET]
        more = "..." if len(self.text) > pos + _SNIPPET or len(shown) == 2 * _SNIPPET else ""
        return ChallengeParseError(f"{reason} at offset {pos} (near {shown}{more})")


def _clip(value: str) -> str:
    return value if len(value) <= _SNIPPET else value[:_SNIPPET] + "..."


def _skip_ows(text: str, pos: int) -> int:
    """Skip OWS = *( SP / HTAB )."""
    end = len(text)
    while pos < end and text[pos] in " \t":
        pos += 1
    return pos
