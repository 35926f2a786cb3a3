"""Push real, small images to a registry over the distribution HTTP API (httpx, sync).

Each image has one random gzipped-tar layer and a config blob; blobs go up with
``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>&digest=``; the manifest with
``PUT /v2/<name>/manifests/<tag>``. A 401 is answered from the challenge: Basic with the
given credentials, Bearer with a push token from the ``token_minter``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST_V1 = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_V1 = "application/vnd.oci.image.index.v1+json"
#: The four manifest media types; docker-registry 404s OCI content unless Accept names them.
MANIFEST_ACCEPT = (DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST_V2, OCI_MANIFEST_V1, OCI_INDEX_V1)
MANIFEST_ACCEPT_HEADER = ", ".join(MANIFEST_ACCEPT)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

ManifestKind = Literal["docker", "oci"]
TokenMinter = Callable[[str], str]
"""Given a repository name, return a bearer token that may pull and push it."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PushedImage:
    """What was pushed: enough to HEAD/GET it back and to check digests and sizes."""

    repository: str
    tag: str | None
    #: The manifest's digest (what the registry returns as Docker-Content-Digest).
    digest: str
    #: The manifest's media type (its Content-Type on GET/HEAD).
    media_type: str
    #: The manifest's size in bytes (Content-Length on GET/HEAD).
    size: int
    #: Every blob the manifest references directly: config first, then layers; for an index,
    #: the blobs of all its child manifests.
    blob_digests: tuple[str, ...]
    config_digest: str | None = None
    layer_digests: tuple[str, ...] = ()
    #: Blob sizes by digest.
    blob_sizes: dict[str, int] = field(default_factory=dict)
    #: The manifest bytes exactly as pushed.
    manifest: bytes = b""
    #: For an index: the child manifests (also pushed to the same repository, untagged).
    children: tuple[PushedImage, ...] = ()

    @property
    def reference(self) -> str:
        """``repository:tag`` (or ``repository@digest`` when untagged)."""
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"

    @property
    def manifest_path(self) -> str:
        """``<repository>/manifests/<tag or digest>``: the path below /v2/."""
        return f"{self.repository}/manifests/{self.tag or self.digest}"

    @property
    def digest_path(self) -> str:
        """``<repository>/manifests/<digest>``."""
        return f"{self.repository}/manifests/{self.digest}"

    def blob_path(self, digest: str | None = None) -> str:
        """``<repository>/blobs/<digest>``; the first layer's blob by default."""
        chosen = digest or (self.layer_digests[0] if self.layer_digests else self.blob_digests[0])
        return f"{self.repository}/blobs/{chosen}"


def make_layer(size: int = 256) -> tuple[bytes, str]:
    """A gzipped tar holding one file of ``size`` random bytes; returns (blob, diff_id)."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name=f"data-{payload[:4].hex()}.bin")
        info.size = len(payload)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256_digest(tar_bytes)


def make_config(
    diff_ids: Sequence[str], *, architecture: str = "amd64", os_name: str = "linux"
) -> bytes:
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "vregistry test fixture"}],
    }
    return json.dumps(config, sort_keys=True).encode()


_CHALLENGE_SCHEME = re.compile(r"^\s*([A-Za-z]+)")


class RegistryPusher:
    """Pushes blobs and manifests; answers 401 challenges itself."""

    def __init__(
        self,
        base_url: str,
        *,
        basic: tuple[str, str] | None = None,
        token_minter: TokenMinter | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._basic = (
            "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii")
            if basic
            else None
        )
        self._use_basic = False
        self._minter = token_minter
        self._tokens: dict[str, str] = {}
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ auth

    def _auth_header(self, repository: str) -> str | None:
        if repository in self._tokens:
            return f"Bearer {self._tokens[repository]}"
        if self._use_basic:
            return self._basic
        return None

    def _answer_challenge(self, repository: str, response: httpx.Response) -> bool:
        """Prepare credentials for the challenge; False when we have none for its scheme."""
        challenge = response.headers.get("WWW-Authenticate", "")
        match = _CHALLENGE_SCHEME.match(challenge)
        scheme = match.group(1).lower() if match else ""
        if scheme == "basic" and self._basic is not None:
            self._use_basic = True
            return True
        if scheme == "bearer" and self._minter is not None:
            self._tokens[repository] = self._minter(repository)
            return True
        return False

    def _request(
        self,
        method: str,
        url: str,
        repository: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        sent = dict(headers or {})
        auth = self._auth_header(repository)
        if auth is not None:
            sent["Authorization"] = auth
        response = self._client.request(method, url, content=content, headers=sent)
        if response.status_code != 401 or not self._answer_challenge(repository, response):
            return response
        auth = self._auth_header(repository)
        if auth is not None:
            sent["Authorization"] = auth
        return self._client.request(method, url, content=content, headers=sent)

    # ------------------------------------------------------------------ pushing

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        head = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        if head.status_code == 200:
            return digest
        start = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository, content=b"")
        if start.status_code != 202:
            raise RuntimeError(
                f"starting a blob upload to {repository} failed: {start.status_code} {start.text}"
            )
        location = start.headers["Location"]
        separator = "&" if "?" in location else "?"
        put = self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            repository,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if put.status_code != 201:
            raise RuntimeError(f"blob PUT to {repository} failed: {put.status_code} {put.text}")
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            content=body,
            headers={"Content-Type": media_type},
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"manifest PUT {repository}:{reference} failed: {response.status_code} {response.text}"
            )
        digest = sha256_digest(body)
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RuntimeError(f"registry computed digest {returned}, expected {digest}")
        return digest

    def push_image(
        self,
        repository: str,
        tag: str | None,
        *,
        kind: ManifestKind = "docker",
        layers: int = 1,
        layer_size: int = 256,
        architecture: str = "amd64",
    ) -> PushedImage:
        """Push a random image; ``tag=None`` pushes the manifest by digest only."""
        layer_media, config_media, manifest_media = (
            (DOCKER_LAYER, DOCKER_CONFIG, DOCKER_MANIFEST_V2)
            if kind == "docker"
            else (OCI_LAYER, OCI_CONFIG, OCI_MANIFEST_V1)
        )
        layer_blobs: list[bytes] = []
        diff_ids: list[str] = []
        for _ in range(layers):
            blob, diff_id = make_layer(layer_size)
            layer_blobs.append(blob)
            diff_ids.append(diff_id)
        config = make_config(diff_ids, architecture=architecture)
        config_digest = self.push_blob(repository, config)
        layer_digests = [self.push_blob(repository, blob) for blob in layer_blobs]
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": manifest_media,
            "config": {"mediaType": config_media, "size": len(config), "digest": config_digest},
            "layers": [
                {"mediaType": layer_media, "size": len(blob), "digest": digest}
                for blob, digest in zip(layer_blobs, layer_digests, strict=True)
            ],
        }
        body = json.dumps(manifest, indent=3).encode()
        digest = self.push_manifest(repository, tag or sha256_digest(body), body, manifest_media)
        sizes = {config_digest: len(config)}
        sizes.update({d: len(b) for d, b in zip(layer_digests, layer_blobs, strict=True)})
        return PushedImage(
            repository=repository,
            tag=tag,
            digest=digest,
            media_type=manifest_media,
            size=len(body),
            blob_digests=(config_digest, *layer_digests),
            config_digest=config_digest,
            layer_digests=tuple(layer_digests),
            blob_sizes=sizes,
            manifest=body,
        )

    def push_index(
        self,
        repository: str,
        tag: str | None,
        *,
        architectures: Sequence[str] = ("amd64", "arm64"),
        kind: ManifestKind = "oci",
    ) -> PushedImage:
        """Push one OCI manifest per architecture (untagged), then an OCI index naming them."""
        children = [
            self.push_image(repository, None, kind=kind, architecture=arch)
            for arch in architectures
        ]
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_V1,
            "manifests": [
                {
                    "mediaType": child.media_type,
                    "size": child.size,
                    "digest": child.digest,
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in zip(children, architectures, strict=True)
            ],
        }
        body = json.dumps(index, indent=3).encode()
        digest = self.push_manifest(repository, tag or sha256_digest(body), body, OCI_INDEX_V1)
        sizes: dict[str, int] = {}
        for child in children:
            sizes.update(child.blob_sizes)
        return PushedImage(
            repository=repository,
            tag=tag,
            digest=digest,
            media_type=OCI_INDEX_V1,
            size=len(body),
            blob_digests=tuple(d for child in children for d in child.blob_digests),
            blob_sizes=sizes,
            manifest=body,
            children=tuple(children),
        )
