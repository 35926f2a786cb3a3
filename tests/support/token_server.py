"""A Docker token server (distribution's token and OAuth2 specs) for docker-registry's ``auth.token``.

It makes its own CA and a signing certificate issued by that CA, writes the CA bundle for the
registry's ``rootcertbundle``, and signs RS256 JWTs whose ``x5c`` header carries the signing
certificate (then the CA). It runs in a background thread, independent of any asyncio loop.

Flows, both on ``/token`` (the realm) and on ``/oauth2/token``:

* ``GET ?service=&scope=&scope=`` with optional Basic credentials ->
  ``{"token", "access_token", "expires_in", "issued_at"}`` (+ ``refresh_token`` when
  ``offline_token=true`` and authenticated).
* ``POST`` form, ``grant_type=password`` (username, password, client_id, service, scope) or
  ``grant_type=refresh_token`` (refresh_token, client_id, service, scope) ->
  ``{"access_token", "expires_in", "issued_at", "scope", "refresh_token"?}`` and no ``token``.

Authorization: anonymous callers may pull repositories whose names start with a public
prefix; known users may pull, push and delete everywhere (or, if listed in
``user_prefixes``, only under those prefixes, plus the public ones for pull). A denied scope is
left out of ``access``; wrong credentials get 401 with a JSON error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.httpserver import BackgroundHTTPServer, BodyError, Knob, QuietHandler

TOKEN_PATH = "/token"
OAUTH2_PATH = "/oauth2/token"
_TOKEN_PATHS = frozenset({TOKEN_PATH, OAUTH2_PATH})
_REDACTED = "<redacted>"
_SECRET_FORM_FIELDS = frozenset({"password", "refresh_token"})
_KNOWN_REPOSITORY_ACTIONS = ("pull", "push", "delete", "*")


@dataclass
class TokenServerKnobs:
    """Runtime behaviour of the token server; every field is a :class:`Knob` on TokenServer."""

    #: Token lifetime in seconds: the JWT's ``exp`` is ``iat + expires_in``.
    expires_in: int = 300
    #: Whether answers carry ``expires_in`` / ``issued_at`` at all.
    include_expires_in: bool = True
    include_issued_at: bool = True
    #: Seconds added to the ``issued_at`` an answer reports (the JWT itself is unchanged): a
    #: token server whose clock runs ahead (> 0) or behind (< 0) of ours.
    issued_at_offset_seconds: float = 0.0
    #: Which fields a GET answer puts the token in ("token" and/or "access_token").
    get_token_fields: tuple[str, ...] = ("token", "access_token")
    #: Answer every GET with this status (e.g. 404/405/400, as ACR does) instead of a token.
    get_status_override: int | None = None
    #: Answer every POST with 405.
    post_disabled: bool = False
    #: Answer every request with 200 text/html (a login page, as a misconfigured proxy does).
    non_json: bool = False
    #: Sleep this long before answering (interrupted when the server stops).
    delay_seconds: float = 0.0
    #: Answer every request with this status (e.g. 500) and a JSON error.
    fail_status: int | None = None
    #: With ``fail_status``: only the next N requests fail, then the server works again
    #: (``fail_count=1``: one 503, then tokens). None: every request fails.
    fail_count: int | None = None
    #: With ``fail_status``: a Retry-After header value (e.g. "30" with 429).
    fail_retry_after: str | None = None
    #: POST requires ``client_id`` (the distribution OAuth2 spec says it is required).
    require_client_id: bool = True
    #: A password-grant POST returns a refresh_token even without ``access_type=offline`` (ACR).
    always_refresh_token: bool = False
    #: Repository-name prefixes that anonymous callers may pull.
    public_prefixes: tuple[str, ...] = ()
    #: Users listed here may only access repositories under these prefixes (plus public pulls).
    user_prefixes: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class TokenRequestRecord:
    """One request as the token server saw it. Passwords and refresh tokens are never kept."""

    method: str
    path: str
    query: dict[str, list[str]]
    #: The POST form with ``password`` and ``refresh_token`` values redacted; empty for GET.
    form: dict[str, list[str]]
    scopes: tuple[str, ...]
    service: str | None
    has_authorization: bool
    #: The user named by Basic credentials or by the form's ``username``; None if anonymous.
    username: str | None
    grant_type: str | None
    chunked: bool
    content_type: str | None
    #: Filled in once answered (0 while in flight or when the connection was dropped).
    status: int = 0
    #: The scopes actually granted (as "type:name:actions" strings), for successful answers.
    granted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedScope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(scope: str) -> ParsedScope | None:
    """Parse ``type:name:actions``; the name may contain ':' (e.g. a host with a port)."""
    head, sep, actions = scope.rpartition(":")
    if not sep:
        return None
    rtype, sep, name = head.partition(":")
    if not sep or not rtype or not name:
        return None
    return ParsedScope(rtype, name, tuple(a for a in actions.split(",") if a))


def split_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Scopes from repeated parameters, each of which may hold several space-separated scopes."""
    out: list[str] = []
    for value in values:
        out.extend(part for part in value.split(" ") if part)
    return tuple(out)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


class _TokenHandler(QuietHandler):
    def _owner(self) -> TokenServer:
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        return owner

    def do_GET(self) -> None:
        self._owner()._handle(self, "GET")

    def do_POST(self) -> None:
        self._owner()._handle(self, "POST")

    def do_HEAD(self) -> None:
        self._owner()._handle(self, "HEAD")

    def do_PUT(self) -> None:
        self._owner()._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self._owner()._handle(self, "DELETE")


class TokenServer(BackgroundHTTPServer):
    """See the module docstring. Start with :func:`start_token_server`; stop with ``close()``."""

    handler_class = _TokenHandler

    expires_in: Knob[int] = Knob()
    include_expires_in: Knob[bool] = Knob()
    include_issued_at: Knob[bool] = Knob()
    issued_at_offset_seconds: Knob[float] = Knob()
    get_token_fields: Knob[tuple[str, ...]] = Knob()
    get_status_override: Knob[int | None] = Knob()
    post_disabled: Knob[bool] = Knob()
    non_json: Knob[bool] = Knob()
    delay_seconds: Knob[float] = Knob()
    fail_status: Knob[int | None] = Knob()
    fail_count: Knob[int | None] = Knob()
    fail_retry_after: Knob[str | None] = Knob()
    require_client_id: Knob[bool] = Knob()
    always_refresh_token: Knob[bool] = Knob()
    public_prefixes: Knob[tuple[str, ...]] = Knob()
    user_prefixes: Knob[dict[str, tuple[str, ...]]] = Knob()

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        public_prefixes: Sequence[str] = (),
        service: str = "vregistry-test-registry",
        issuer: str = "vregistry-test-token-issuer",
    ) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.service = service
        self.issuer = issuer
        self._default_users = dict(users or {})
        self._default_public_prefixes = tuple(public_prefixes)
        self._knobs = self._default_knobs()
        self._users = dict(self._default_users)
        self._refresh_tokens: dict[str, str] = {}
        self._records: list[TokenRequestRecord] = []
        self._by_method: Counter[str] = Counter()
        self._by_method_scope: Counter[tuple[str, str]] = Counter()
        self._issued = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="vreg-token-"))
        self._make_keys()

    # ------------------------------------------------------------------ identity

    @property
    def url(self) -> str:
        """The realm: ``http://127.0.0.1:PORT/token`` (both GET and POST are served there)."""
        return f"{self.base_url}{TOKEN_PATH}"

    @property
    def realm(self) -> str:
        return self.url

    @property
    def oauth2_url(self) -> str:
        """``http://127.0.0.1:PORT/oauth2/token``: the same endpoint under ACR's path."""
        return f"{self.base_url}{OAUTH2_PATH}"

    def _make_keys(self) -> None:
        now = dt.datetime.now(dt.UTC)
        not_before = now - dt.timedelta(days=1)
        not_after = now + dt.timedelta(days=30)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vregistry test token CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signing_cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vregistry test token signer")])
            )
            .issuer_name(ca_name)
            .public_key(signing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self._signing_key = signing_key
        self.signing_cert = signing_cert
        self.ca_cert = ca_cert
        self.ca_bundle_path = self.workdir / "token-ca.pem"
        self.ca_bundle_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for cert in (signing_cert, ca_cert)
        ]

    # ------------------------------------------------------------------ knobs and users

    def _default_knobs(self) -> TokenServerKnobs:
        return TokenServerKnobs(public_prefixes=self._default_public_prefixes)

    def configure(self, **changes: Any) -> None:
        """Set several knobs at once, e.g. ``configure(expires_in=5, include_issued_at=False)``."""
        names = {f.name for f in fields(TokenServerKnobs)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown token server knobs: {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self._knobs, name, value)

    @property
    def users(self) -> dict[str, str]:
        with self._lock:
            return dict(self._users)

    def set_user(self, username: str, password: str) -> None:
        with self._lock:
            self._users[username] = password

    def remove_user(self, username: str) -> None:
        with self._lock:
            self._users.pop(username, None)

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh_tokens.clear()

    def reset(self) -> None:
        """Zero the counters and records; restore knobs, users; forget refresh tokens."""
        with self._lock:
            self._knobs = self._default_knobs()
            self._users = dict(self._default_users)
            self._refresh_tokens.clear()
            self._records.clear()
            self._by_method.clear()
            self._by_method_scope.clear()
            self._issued = 0

    # ------------------------------------------------------------------ counters

    @property
    def request_count(self) -> int:
        """Every request received (any method, any path, whatever the answer)."""
        with self._lock:
            return len(self._records)

    @property
    def issued_count(self) -> int:
        """Tokens issued by the HTTP flows (``mint_token`` does not count)."""
        with self._lock:
            return self._issued

    @property
    def count_by_method(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_method)

    @property
    def count_by_scope(self) -> dict[tuple[str, str], int]:
        """Requests per (method, scope string); a request without scope counts under ""."""
        with self._lock:
            return dict(self._by_method_scope)

    def count(self, method: str | None = None, scope: str | None = None) -> int:
        """Requests, optionally only those of ``method`` and/or naming ``scope``."""
        with self._lock:
            if scope is None:
                if method is None:
                    return len(self._records)
                return self._by_method[method.upper()]
            return sum(
                n
                for (m, s), n in self._by_method_scope.items()
                if s == scope and (method is None or m == method.upper())
            )

    @property
    def records(self) -> list[TokenRequestRecord]:
        with self._lock:
            return list(self._records)

    # ------------------------------------------------------------------ tokens

    def mint_token(
        self,
        scopes: Sequence[str] = (),
        *,
        subject: str = "test-seeder",
        expires_in: int | None = None,
        service: str | None = None,
    ) -> str:
        """Sign a token granting exactly ``scopes`` (e.g. "repository:x:pull,push"), no checks."""
        parsed = [p for p in (parse_scope(s) for s in scopes) if p is not None]
        lifetime = self.expires_in if expires_in is None else expires_in
        token, _ = self._sign(subject, parsed, lifetime, service or self.service)
        return token

    def push_token(self, repository: str, *, expires_in: int | None = None) -> str:
        """A token for pull+push on ``repository`` (seeding images)."""
        return self.mint_token([f"repository:{repository}:pull,push"], expires_in=expires_in)

    def decode_token(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        """Verify a token this server signed and return its claims."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._signing_key.public_key(),
            algorithms=["RS256"],
            audience=self.service,
            issuer=self.issuer,
            options={"verify_exp": verify_exp},
        )
        return claims

    def _sign(
        self, subject: str, granted: Sequence[ParsedScope], lifetime: int, audience: str
    ) -> tuple[str, dt.datetime]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in granted:
            actions = merged.setdefault((scope.type, scope.name), [])
            actions.extend(a for a in scope.actions if a not in actions)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": int(now.timestamp()) + lifetime,
            "nbf": int(now.timestamp()) - 1,
            "iat": int(now.timestamp()),
            "jti": uuid.uuid4().hex,
            "access": [
                {"type": rtype, "name": name, "actions": actions}
                for (rtype, name), actions in merged.items()
                if actions
            ],
        }
        token = jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"x5c": self._x5c})
        return token, now

    def _grant(
        self, user: str | None, requested: Sequence[str], knobs: TokenServerKnobs
    ) -> list[ParsedScope]:
        granted: list[ParsedScope] = []
        for raw in requested:
            scope = parse_scope(raw)
            if scope is None:
                continue
            allowed = self._allowed_actions(user, scope, knobs)
            if allowed:
                granted.append(ParsedScope(scope.type, scope.name, allowed))
        return granted

    @staticmethod
    def _allowed_actions(
        user: str | None, scope: ParsedScope, knobs: TokenServerKnobs
    ) -> tuple[str, ...]:
        if scope.type == "registry" and scope.name == "catalog":
            return ("*",) if user is not None and "*" in scope.actions else ()
        if scope.type != "repository":
            return ()
        public = scope.name.startswith(knobs.public_prefixes) if knobs.public_prefixes else False
        public_pull: tuple[str, ...] = ("pull",) if public and "pull" in scope.actions else ()
        if user is None:
            return public_pull
        prefixes = knobs.user_prefixes.get(user)
        if prefixes is not None and not scope.name.startswith(tuple(prefixes)):
            return public_pull
        return tuple(a for a in scope.actions if a in _KNOWN_REPOSITORY_ACTIONS)

    # ------------------------------------------------------------------ HTTP

    def _handle(self, handler: _TokenHandler, method: str) -> None:
        parsed = urlsplit(handler.path)
        query = parse_qs(parsed.query, keep_blank_values=True)
        chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        content_type = handler.headers.get("Content-Type")
        form: dict[str, list[str]] = {}
        body_error: str | None = None
        if method == "POST":
            try:
                body = handler.read_body(limit=1024 * 1024)
            except BodyError as exc:
                body_error = str(exc)
                body = b""
            if (content_type or "").split(";")[0].strip().lower() == (
                "application/x-www-form-urlencoded"
            ):
                form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        authorization = handler.headers.get("Authorization")
        basic_user: str | None = None
        basic_password: str | None = None
        basic_malformed = False
        if authorization and authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                basic_user, sep, basic_password = decoded.partition(":")
                basic_malformed = not sep
            except (binascii.Error, UnicodeDecodeError):
                basic_malformed = True
        source = query if method == "GET" else form
        scopes = split_scopes(source.get("scope", []))
        service = _first(source, "service")
        grant_type = _first(form, "grant_type")
        username = basic_user if method == "GET" else _first(form, "username")
        record = TokenRequestRecord(
            method=method,
            path=parsed.path,
            query=query,
            form={
                k: ([_REDACTED] * len(v) if k in _SECRET_FORM_FIELDS else v)
                for k, v in form.items()
            },
            scopes=scopes,
            service=service,
            has_authorization=authorization is not None,
            username=username,
            grant_type=grant_type,
            chunked=chunked,
            content_type=content_type,
        )
        with self._lock:
            self._records.append(record)
            self._by_method[method] += 1
            for scope in scopes or ("",):
                self._by_method_scope[(method, scope)] += 1
            knobs = TokenServerKnobs(
                **{f.name: getattr(self._knobs, f.name) for f in fields(self._knobs)}
            )
            if knobs.fail_status is not None and knobs.fail_count is not None:
                if knobs.fail_count > 0:
                    self._knobs.fail_count = knobs.fail_count - 1
                else:
                    knobs.fail_status = None  # the failures ran out: answer normally
            users = dict(self._users)

        self.sleep(knobs.delay_seconds)
        if self.stopping.is_set():
            handler.drop_connection()
            return

        def reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            record.status = status
            handler.send_bytes(
                status,
                json.dumps(payload).encode(),
                "application/json",
                headers,
                include_body=method != "HEAD",
            )

        if knobs.fail_status is not None:
            reply(
                knobs.fail_status,
                {"errors": [{"code": "UNKNOWN", "message": "injected failure"}]},
                {"Retry-After": knobs.fail_retry_after} if knobs.fail_retry_after else None,
            )
            return
        if knobs.non_json:
            record.status = 200
            page = b"<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>"
            handler.send_bytes(200, page, "text/html; charset=utf-8", include_body=method != "HEAD")
            return
        if parsed.path not in _TOKEN_PATHS:
            reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
            return
        if method == "GET":
            if knobs.get_status_override is not None:
                reply(
                    knobs.get_status_override,
                    {"errors": [{"code": "UNSUPPORTED", "message": "GET not served here"}]},
                )
                return
            self._serve_get(
                reply, record, knobs, users, query, basic_user, basic_password, basic_malformed
            )
            return
        if method == "POST":
            if knobs.post_disabled:
                reply(405, {"error": "unsupported_method"}, {"Allow": "GET"})
                return
            if body_error is not None:
                reply(400, {"error": "invalid_request", "error_description": body_error})
                return
            self._serve_post(reply, record, knobs, users, form)
            return
        reply(
            405,
            {"errors": [{"code": "UNSUPPORTED", "message": "method not allowed"}]},
            {"Allow": "GET, POST"},
        )

    def _token_fields(self, knobs: TokenServerKnobs, issued_at: dt.datetime) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if knobs.include_expires_in:
            out["expires_in"] = knobs.expires_in
        if knobs.include_issued_at:
            offset = dt.timedelta(seconds=knobs.issued_at_offset_seconds)
            out["issued_at"] = _rfc3339(issued_at + offset)
        return out

    def _new_refresh_token(self, username: str) -> str:
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[refresh] = username
        return refresh

    def _serve_get(
        self,
        reply: Any,
        record: TokenRequestRecord,
        knobs: TokenServerKnobs,
        users: dict[str, str],
        query: dict[str, list[str]],
        basic_user: str | None,
        basic_password: str | None,
        basic_malformed: bool,
    ) -> None:
        user: str | None = None
        if basic_malformed or basic_user is not None:
            if basic_malformed or users.get(basic_user or "") != basic_password:
                reply(
                    401,
                    {
                        "errors": [
                            {"code": "UNAUTHORIZED", "message": "invalid username or password"}
                        ]
                    },
                    {"WWW-Authenticate": 'Basic realm="token"'},
                )
                return
            user = basic_user
        granted = self._grant(user, record.scopes, knobs)
        token, issued_at = self._sign(
            user or "", granted, knobs.expires_in, record.service or self.service
        )
        payload: dict[str, Any] = {name: token for name in knobs.get_token_fields}
        payload.update(self._token_fields(knobs, issued_at))
        offline = (query.get("offline_token") or ["false"])[0].lower() == "true"
        if offline and user is not None:
            payload["refresh_token"] = self._new_refresh_token(user)
        record.granted = tuple(str(g) for g in granted)
        with self._lock:
            self._issued += 1
        reply(200, payload)

    def _serve_post(
        self,
        reply: Any,
        record: TokenRequestRecord,
        knobs: TokenServerKnobs,
        users: dict[str, str],
        form: dict[str, list[str]],
    ) -> None:
        if not form:
            reply(400, {"error": "invalid_request", "error_description": "expected a form body"})
            return
        if knobs.require_client_id and not _first(form, "client_id"):
            reply(400, {"error": "invalid_request", "error_description": "client_id is required"})
            return
        grant_type = _first(form, "grant_type")
        refresh: str | None = None
        if grant_type == "password":
            username, password = _first(form, "username"), _first(form, "password")
            if not username or password is None:
                reply(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "username and password are required",
                    },
                )
                return
            if users.get(username) != password:
                reply(
                    401,
                    {"error": "invalid_grant", "error_description": "invalid username or password"},
                )
                return
            user = username
            if (
                knobs.always_refresh_token
                or (_first(form, "access_type") or "").lower() == "offline"
            ):
                refresh = self._new_refresh_token(user)
        elif grant_type == "refresh_token":
            presented = _first(form, "refresh_token")
            with self._lock:
                known_user = self._refresh_tokens.get(presented or "")
            if known_user is None or known_user not in users:
                reply(
                    401,
                    {
                        "error": "invalid_grant",
                        "error_description": "unknown or revoked refresh token",
                    },
                )
                return
            user = known_user
            refresh = presented
            record.username = user
        else:
            reply(400, {"error": "unsupported_grant_type"})
            return
        granted = self._grant(user, record.scopes, knobs)
        token, issued_at = self._sign(
            user, granted, knobs.expires_in, record.service or self.service
        )
        payload: dict[str, Any] = {"access_token": token}
        payload.update(self._token_fields(knobs, issued_at))
        payload["scope"] = " ".join(str(g) for g in granted)
        if refresh is not None:
            payload["refresh_token"] = refresh
        record.granted = tuple(str(g) for g in granted)
        with self._lock:
            self._issued += 1
        reply(200, payload)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop serving and remove the key material directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_token_server(
    *,
    users: Mapping[str, str] | None = None,
    public_prefixes: Sequence[str] = (),
    service: str = "vregistry-test-registry",
    issuer: str = "vregistry-test-token-issuer",
) -> TokenServer:
    server = TokenServer(
        users=users, public_prefixes=public_prefixes, service=service, issuer=issuer
    )
    server.start()
    return server


__all__ = [
    "OAUTH2_PATH",
    "TOKEN_PATH",
    "ParsedScope",
    "TokenRequestRecord",
    "TokenServer",
    "TokenServerKnobs",
    "parse_scope",
    "split_scopes",
    "start_token_server",
]
