"""The released OHIF Viewer v3 build (``@ohif/app`` from the npm registry), for end-to-end tests.

:func:`ohif_dist` downloads the pinned tarball with plain ``urllib`` (no node or npm needed), checks
its sha512 integrity against the value the registry publishes, and unpacks ``package/dist/`` into a
cache folder (``~/.cache/pacs-test/ohif-<version>``, or ``$PACS_TEST_OHIF_CACHE``). The build is
used as released: :class:`OhifServer` serves those files unchanged from its own origin (a port of
its own, so every DICOMweb request is cross-origin and needs CORS), with the single-page-app
fallback to ``index.html`` and an ``app-config.js`` made by :func:`app_config` in place of the
demo one.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

VERSION = "3.12.0"
TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
#: ``npm view @ohif/app@3.12.0 dist.integrity`` (Subresource Integrity form: sha512, base64).
INTEGRITY = "sha512-D+SyPEOhW7E+P+ZfzFO1C3n8qwTfKSXExNEt2DPB5QHoLjSnUVTqEE+xaWX2B9p53boJfKWEM4b4SIVmz0qmOA=="


class OhifUnavailable(RuntimeError):
    """The OHIF build could not be downloaded or did not match its pinned integrity."""


def cache_dir() -> Path:
    """Where the unpacked build lives (``$PACS_TEST_OHIF_CACHE`` overrides the default)."""
    override = os.environ.get("PACS_TEST_OHIF_CACHE")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pacs-test" / f"ohif-{VERSION}"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _download(url: str, dest: Path, timeout: float) -> None:
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        tmp.replace(dest)
    except OSError as exc:  # URLError, timeouts and disk errors are all OSErrors
        tmp.unlink(missing_ok=True)
        raise OhifUnavailable(f"cannot download {url}: {exc}") from exc


def ohif_dist(timeout: float = 300.0) -> Path:
    """The unpacked ``dist/`` folder of the pinned OHIF build, downloaded and verified once.

    Several test processes (pytest-xdist) may ask at once: a lock file lets one of them fetch it.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _unpacked(root, timeout)


def _unpacked(root: Path, timeout: float) -> Path:
    dist = root / "dist"
    marker = root / "dist.ok"
    if marker.is_file() and marker.read_text().strip() == INTEGRITY and (dist / "index.html").is_file():
        return dist
    tarball = root / f"ohif-app-{VERSION}.tgz"
    if not tarball.is_file() or _integrity(tarball) != INTEGRITY:
        _download(TARBALL, tarball, timeout)
    got = _integrity(tarball)
    if got != INTEGRITY:
        tarball.unlink(missing_ok=True)
        raise OhifUnavailable(f"{TARBALL}: integrity {got} is not the pinned {INTEGRITY}")
    staging = root / "dist.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
        for m in members:
            m.name = m.name.removeprefix("package/")
        tar.extractall(staging, members=members, filter="data")
    shutil.rmtree(dist, ignore_errors=True)
    (staging / "dist").replace(dist)
    staging.rmdir()
    marker.write_text(INTEGRITY + "\n")
    tarball.unlink()  # the unpacked build is what is kept (and re-checked through the marker)
    return dist


def app_config(
    dicomweb_root: str,
    *,
    omit_quotation: bool = False,
    thumbnail_rendering: str = "wadors",
) -> str:
    """An ``app-config.js`` whose only data source is our DICOMweb root.

    Keys as OHIF 3.12's ``DicomWebDataSource`` reads them (``extensions/default/src/DicomWebDataSource``):
    ``omitQuotationForMultipartRequest`` chooses between ``type="application/octet-stream";
    transfer-syntax="*"`` (false) and the unquoted spelling (true) in the frame ``Accept`` header.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacs",
        "configuration": {
            "friendlyName": "pacs",
            "name": "pacs",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "supportsStow": True,
            "imageRendering": "wadors",
            "thumbnailRendering": thumbnail_rendering,
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": omit_quotation,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "defaultDataSourceName": "pacs",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The build's files; ``/app-config.js`` from memory; unknown routes answer ``index.html``."""

    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".woff2": "font/woff2",
    }

    def __init__(self, *args: Any, directory: str, config: OhifServer, **kwargs: Any) -> None:
        self._ohif = config
        super().__init__(*args, directory=directory, **kwargs)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        self._ohif.requests.append(path)
        if path == "/app-config.js":
            body = self._ohif.config.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        local = Path(self.translate_path(path))
        if not local.exists() and "." not in path.rsplit("/", 1)[-1]:
            self.path = "/index.html"  # client-side routes: /viewer, /viewer?StudyInstanceUIDs=...
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class OhifServer:
    """OHIF's static files on their own origin; ``config`` is the ``app-config.js`` served."""

    dist: Path
    config: str = ""
    port: int = 0
    requests: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The origin the viewer is served from."""
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_ohif(dist: Path) -> Iterator[OhifServer]:
    """Serve ``dist`` on 127.0.0.1 (port 0) from a thread until the block ends."""
    ohif = OhifServer(dist=dist)
    handler = partial(_Handler, directory=str(dist), config=ohif)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    ohif.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="ohif-static", daemon=True)
    thread.start()
    try:
        yield ohif
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
