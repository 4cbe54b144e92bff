"""Image sources: a `docker save` tarball, an OCI image layout (directory or tar), read without a
Docker daemon. Yields the layers (as uncompressed random-access blobs) and the image config.

Everything here is untrusted: JSON is size-capped, digests are validated before they become
paths, outer-tar members are looked up by exact name (duplicates refused), and compressed blobs
are decompressed under a cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitro_attest.eif.beneath import open_in_image, open_root
from nitro_attest.eif.blobs import (
    Blob,
    FileCache,
    ImageError,
    Spool,
    opened_file,
    uncompressed,
    whole_file,
)
from nitro_attest.eif.layer import Limits
from nitro_attest.eif.rootfs import split_name
from nitro_attest.eif.tar import SYMLINK, HeaderBudget, iter_members

MAX_JSON = 4 << 20
MAX_LAYERS = 256
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
PLATFORM = ("linux", "amd64")


@dataclass(slots=True)
class Image:
    layers: list[Blob]
    config: dict[str, Any]
    config_digest: str
    repo_tags: list[str] = field(default_factory=list)


def _small(blob: Blob, files: FileCache) -> bytes:
    """A JSON document's bytes (index, manifest, config), refused past MAX_JSON unread."""
    if blob.size > MAX_JSON:
        raise ImageError(f"{blob.name}: {blob.size} bytes, at most {MAX_JSON}")
    return blob.pread(files, blob.size, 0)


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ImageError(f"{what}: not valid JSON") from None


class _TarIndex:
    """Members of an outer tar (docker save / OCI layout tar) by normalized name."""

    def __init__(self, blob: Blob, files: FileCache, limits: Limits, budget: HeaderBudget) -> None:
        self.blob = blob
        self.members: dict[str, tuple[int, int, bytes, bytes]] = {}
        for m in iter_members(blob, files, max_members=limits.max_entries, budget=budget):
            name = "/".join(p.decode("utf-8", "replace") for p in split_name(m.name, blob.name))
            if name in self.members:
                raise ImageError(f"{blob.name}: member {name} appears twice (ambiguous)")
            self.members[name] = (m.data_offset, m.size, m.type, m.linkname)

    def get(self, name: str, what: str, depth: int = 0) -> Blob:
        key = "/".join(p.decode() for p in split_name(name.encode(), what))
        found = self.members.get(key)
        if found is None:
            raise ImageError(f"{self.blob.name}: {what} {key} is missing")
        offset, size, member_type, link = found
        if member_type == SYMLINK and depth < 8:  # legacy docker save links duplicate layers
            base = key.rsplit("/", 1)[0] if "/" in key else ""
            target = link.decode("utf-8", "replace")
            return self.get(os.path.normpath(os.path.join(base, target)), what, depth + 1)
        if member_type not in (b"0", b"\0", b"7"):
            raise ImageError(f"{self.blob.name}: {what} {key} is not a regular file")
        return Blob(self.blob.path, self.blob.offset + offset, size, f"{what} ({key})")

    def read(self, name: str, what: str, files: FileCache) -> bytes:
        return _small(self.get(name, what), files)

    def has(self, name: str) -> bool:
        return name in self.members


class _DirLayout:
    """An extracted docker save or an OCI layout folder: every name the image gives is opened
    beneath the folder, component by component, never through a link that leaves it."""

    def __init__(self, root: Path, files: FileCache) -> None:
        self.root = root
        self.files = files
        self.fd = files.keep(open_root(root))

    def get(self, name: str, what: str) -> Blob:
        parts = split_name(name.encode(), what)
        fd, resolved = open_in_image(self.fd, str(self.root), parts)
        key = os.path.join(self.root, resolved)
        return opened_file(fd, key, f"{what} ({name})", self.files)

    def read(self, name: str, what: str, files: FileCache) -> bytes:
        return _small(self.get(name, what), files)

    def has(self, name: str) -> bool:
        return os.path.lexists(self.root / name)


Layout = _TarIndex | _DirLayout


def open_image(
    source: Path, files: FileCache, spool: Spool, limits: Limits, budget: HeaderBudget
) -> Image:
    """A docker save tarball or an OCI layout (dir or tar, gzip allowed around the tar)."""
    if source.is_dir():
        layout: Layout = _DirLayout(source, files)
    else:
        outer = uncompressed(whole_file(source, str(source), files), files, spool)
        layout = _TarIndex(outer, files, limits, budget)
    if layout.has("manifest.json"):
        return _docker_save(layout, files, spool, limits)
    if layout.has("index.json"):
        return _oci(layout, files, spool, limits)
    raise ImageError(f"{source}: neither a docker save tarball nor an OCI layout")


def _docker_save(layout: Layout, files: FileCache, spool: Spool, limits: Limits) -> Image:
    manifest = _json(layout.read("manifest.json", "manifest.json", files), "manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        n = len(manifest) if isinstance(manifest, list) else "?"
        raise ImageError(f"manifest.json: expected exactly one image, found {n} (save one image)")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageError("manifest.json: Config and Layers are required")
    if not all(isinstance(x, str) for x in layer_names) or len(layer_names) > MAX_LAYERS:
        raise ImageError(f"manifest.json: Layers must be at most {MAX_LAYERS} names")
    raw = layout.read(config_name, "image config", files)
    raw_tags = entry.get("RepoTags")
    tags: list[Any] = raw_tags if isinstance(raw_tags, list) else []
    layers = _distinct([layout.get(n, f"layer {i + 1}") for i, n in enumerate(layer_names)],
                       files, spool)  # fmt: skip
    return Image(
        layers,
        _config(raw),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
        [t for t in tags if isinstance(t, str)],
    )


def _blob_name(descriptor: Any, what: str) -> tuple[str, int | None]:
    if not isinstance(descriptor, dict):
        raise ImageError(f"{what}: descriptor must be an object")
    digest = descriptor.get("digest")
    match = DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        raise ImageError(f"{what}: digest {str(digest)[:80]!r} is not sha256:<64 hex>")
    size = descriptor.get("size")
    return f"blobs/sha256/{match.group(1)}", size if isinstance(size, int) else None


def _sized(layout: Layout, descriptor: Any, what: str) -> Blob:
    name, size = _blob_name(descriptor, what)
    blob = layout.get(name, what)
    if size is not None and blob.size != size:
        raise ImageError(f"{what}: blob is {blob.size} bytes, its descriptor says {size}")
    return blob


def _oci(layout: Layout, files: FileCache, spool: Spool, limits: Limits) -> Image:
    doc = _json(layout.read("index.json", "index.json", files), "index.json")
    for depth in range(4):  # index -> (nested index ->) manifest
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise ImageError("OCI index: no manifests")
        chosen = _choose(manifests)
        blob = _sized(layout, chosen, f"manifest {depth + 1}")
        doc = _json(_small(blob, files), blob.name)
        if isinstance(doc, dict) and "layers" in doc:
            break
    else:
        raise ImageError("OCI index: nested too deeply")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise ImageError(f"OCI manifest: layers must be a list of at most {MAX_LAYERS}")
    raw = _small(_sized(layout, doc.get("config"), "image config"), files)
    tags = []
    if isinstance(chosen.get("annotations"), dict):
        ref = chosen["annotations"].get("org.opencontainers.image.ref.name")
        if isinstance(ref, str):
            tags.append(ref)
    blobs = _distinct([_sized(layout, d, f"layer {i + 1}") for i, d in enumerate(layers)],
                      files, spool)  # fmt: skip
    return Image(blobs, _config(raw), "sha256:" + hashlib.sha256(raw).hexdigest(), tags)


MAX_REPEATED_LAYER = 64 << 10
"""A layer may be named again only if it is this small (uncompressed): identical empty layers
repeat in real images; a large one named 256 times is 256 times the work for nothing."""


def _distinct(raw: list[Blob], files: FileCache, spool: Spool) -> list[Blob]:
    """The layers, uncompressed; one named twice (by name, or by a link to the same bytes) is
    refused unless small, and is then decompressed once."""
    seen: dict[tuple[str, int, int], tuple[int, Blob]] = {}
    out = []
    for i, blob in enumerate(raw):
        key = (blob.path, blob.offset, blob.size)
        first = seen.get(key)
        if first is None:
            layer = uncompressed(blob, files, spool)
            seen[key] = (i, layer)
        elif first[1].size > MAX_REPEATED_LAYER:
            raise ImageError(
                f"{blob.name}: the same as layer {first[0] + 1}; a layer named twice is refused "
                f"unless it is at most {MAX_REPEATED_LAYER} bytes (work bound)"
            )
        else:
            layer = first[1]
        out.append(layer)
    return out


def _choose(manifests: list[Any]) -> dict[str, Any]:
    if len(manifests) == 1 and isinstance(manifests[0], dict):
        return manifests[0]
    fits = [
        m
        for m in manifests
        if isinstance(m, dict)
        and isinstance(m.get("platform"), dict)
        and (m["platform"].get("os"), m["platform"].get("architecture")) == PLATFORM
    ]
    if len(fits) != 1:
        raise ImageError(
            f"OCI index: {len(manifests)} manifests and {len(fits)} for linux/amd64; "
            "save a single-platform image"
        )
    return fits[0]


def _config(raw: bytes) -> dict[str, Any]:
    config = _json(raw, "image config")
    if not isinstance(config, dict):
        raise ImageError("image config: expected a JSON object")
    return config
