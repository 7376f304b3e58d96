"""Local paths and URLs of weight files, downloaded once into a cache and checked.

A URL is fetched into ``$SWIFTDET_CACHE`` (default ``~/.cache/swiftdet``) through a temp file
that is renamed into place only once complete and verified, so an interrupted download never
leaves a file that looks finished. The SHA-256 is checked when given, or when the file name
carries a hash prefix the way torchvision's do (``name-<first hex digits of sha256>.pth``).
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from swiftdet.errors import WeightsError
from swiftdet.utils.io import atomic_write

__all__ = ["cached_path", "default_cache_dir", "hash_prefix_from_name", "sha256_of"]

_URL_SCHEMES = ("http", "https", "file")
# torchvision names its files 'name-<8 to 64 hex digits>.pth'.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$SWIFTDET_CACHE``, else ``~/.cache/swiftdet``."""
    env = os.environ.get("SWIFTDET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "swiftdet"


def hash_prefix_from_name(name: str) -> str | None:
    """The SHA-256 prefix a torchvision-style file name carries, e.g. 'resnet50-0676ba61.pth'."""
    m = _HASH_IN_NAME.search(name)
    return m.group(1) if m else None


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in _URL_SCHEMES


def _check_hash(actual: str, sha256: str | None, prefix: str | None, what: str) -> None:
    if sha256 is not None and actual != sha256.lower():
        raise WeightsError(
            f"{what} has SHA-256 {actual}, expected {sha256.lower()}: the file is corrupted or not the one "
            "intended. Delete it and download again, or check the URL."
        )
    if sha256 is None and prefix is not None and not actual.startswith(prefix):
        raise WeightsError(
            f"{what} has SHA-256 {actual}, but its name says it should start with {prefix}: the download is "
            "corrupted or the file was replaced. Delete it and download again."
        )


def cached_path(url_or_path: str | os.PathLike, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
                timeout: float = 60.0) -> Path:
    """A local file for ``url_or_path``: a path as it is, a URL downloaded into the cache first.

    Args:
        url_or_path: a local file, or an http(s):// or file:// URL.
        sha256: the expected SHA-256 hex digest; checked for URLs (on download and on later cache
            hits) and for local files. Without it, a hash prefix in a URL's file name is checked.
        cache_dir: where downloads go (default :func:`default_cache_dir`).
        timeout: seconds to wait for the server on each network operation.

    Raises:
        WeightsError: the path does not exist, the URL cannot be fetched (offline, HTTP error), or
            the hash does not match.
    """
    text = os.fspath(url_or_path)
    if not _is_url(text):
        path = Path(text).expanduser()
        if not path.is_file():
            where = " (it is a folder)" if path.is_dir() else ""
            raise WeightsError(f"Weights file '{text}' does not exist{where}. Check the path, or give an http(s) URL.")
        if sha256 is not None:
            _check_hash(sha256_of(path), sha256, None, f"Weights file '{text}'")
        return path

    parsed = urllib.parse.urlparse(text)
    name = Path(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise WeightsError(f"The URL '{text}' does not end in a file name; give the URL of the weights file itself.")
    prefix = hash_prefix_from_name(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / name
    if target.is_file():
        if sha256 is not None:
            _check_hash(sha256_of(target), sha256, None, f"The cached file '{target}'")
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(
            f"Cannot create the weights cache folder '{cache}' ({e.strerror}). Set SWIFTDET_CACHE to a writable folder."
        ) from None
    def download(out) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(text, timeout=timeout) as response:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        except urllib.error.HTTPError as e:
            raise WeightsError(f"Downloading '{text}' failed: HTTP {e.code} {e.reason}. Check the URL.") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise WeightsError(
                f"Cannot download '{text}' ({reason}). If this machine is offline, download the file "
                f"elsewhere and pass its local path, or place it in the cache as '{target}'."
            ) from None
        # Raising here leaves no file behind: the cache never holds a download that failed its check.
        _check_hash(digest.hexdigest(), sha256, prefix, f"The file downloaded from '{text}'")

    atomic_write(target, download)
    return target

