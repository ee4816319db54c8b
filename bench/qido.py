"""QIDO-RS latency at scale: this PACS next to Orthanc + its DICOMweb plugin, same studies.

The pacs index is generated directly (``bench/cfind.py``'s generator: one series and instance
per study, Vietnamese names, a date per study); Orthanc gets the same studies through its REST
API (one small instance each). Both answer the same QIDO requests over one keep-alive HTTP
connection; median and p95 of ``--repeat`` requests each, with the number of matches so that
the two can be seen to agree. Not run by the tests.

Like-for-like notes (Orthanc 1.10.1 + DICOMweb plugin 1.7, the Debian packages):

* Query strings are encoded as a browser's ``encodeURIComponent`` does (dicomweb-client, hence
  OHIF): ``*`` is sent as is. Orthanc >= 1.10 does not percent-decode GET arguments (its
  ``HttpToolbox::ParseGetArguments`` leaves it to civetweb, whose ``query_string`` is raw), so
  the ``%2A`` that httpx's ``params=`` sends reached the plugin as the literal ``Phan%2A`` and
  matched nothing (any percent-escape does: ``%5E`` for ``^``, any non-ASCII letter).
* Orthanc matches PN case-insensitively by default (``CaseSensitivePN`` false; the plugin's
  ``QidoCaseSensitive`` is left unset, so it sends no ``CaseSensitive`` to ``/tools/find``), but
  not accent-insensitively (``ToUpperCaseWithAccents``): ``nguyen*`` misses ``Nguyễn``, which
  ours (accent-folded name keys) matches. The name queries are therefore ASCII fragments that
  folding leaves unchanged: a surname prefix and an OHIF-style ``*x*`` infix in lower case.
* Orthanc runs with ``DefaultEncoding: Utf8``, as its manual advises for non-Latin-1 sites;
  with the Latin-1 default its answers drop the Vietnamese letters (``Nguyn^Vn An``).

    .venv/bin/python bench/qido.py --studies 2000
    .venv/bin/python bench/qido.py --studies 10000 --no-orthanc
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfind import generate, serve_orthanc, serve_pacs

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
JSON = {"Accept": "application/dicom+json"}
URI_COMPONENT_SAFE = "-_.!~*'()"  # what JavaScript's encodeURIComponent leaves unescaped


def start_pacs(tmp: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    proc, _port, base = serve_pacs(tmp, url, http_extra="max_query_limit = 20000")
    return proc, f"{base}/dicom-web"


def start_orthanc(tmp: Path, n: int) -> tuple[subprocess.Popen[bytes], str]:
    proc, _dport, base = serve_orthanc(tmp, n, plugins=(PLUGIN,), config={"DefaultEncoding": "Utf8"})
    return proc, f"{base}/dicom-web"


def queries(n: int) -> dict[str, dict[str, str]]:
    """The measured requests (query parameters of /studies)."""
    return {
        "PatientID": {"PatientID": f"P{(7919 * 3) % (n // 2)}"},
        # ASCII fragments (see the module docstring): 1 surname in 10, so n / 10 studies each.
        "PatientName prefix": {"PatientName": "Phan*"},
        "PatientName *infix* (OHIF)": {"PatientName": "*nguy*"},
        "StudyDate range (1 month)": {"StudyDate": "20240101-20240131"},
        "all studies": {"limit": str(n)},
    }


def measure(base: str, n: int, repeat: int) -> dict[str, tuple[float, float, int]]:
    out = {}
    with httpx.Client(timeout=120) as c:
        for name, params in queries(n).items():
            query = "&".join(f"{k}={quote(v, safe=URI_COMPONENT_SAFE)}" for k, v in params.items())
            url = f"{base}/studies?{query}"
            times, count = [], 0
            for _ in range(repeat):
                t = time.perf_counter()
                r = c.get(url, headers=JSON)
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                count = len(r.json()) if r.status_code == 200 else 0
            times.sort()
            out[name] = (statistics.median(times), times[int(0.95 * (len(times) - 1))], count)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-orthanc", action="store_true")
    args = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "bench/qido.py", *sys.argv[1:]]))
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="qido-bench-") as d:
        tmp = Path(d)
        try:
            url = f"sqlite:///{tmp / 'index.sqlite'}"
            generate(url, args.studies, 1, 1)
            proc, base = start_pacs(tmp, url)
            procs.append(proc)
            results["pacs"] = measure(base, args.studies, args.repeat)
            if not args.no_orthanc and Path(ORTHANC).exists() and Path(PLUGIN).exists():
                oproc, obase = start_orthanc(tmp, args.studies)
                procs.append(oproc)
                results["orthanc"] = measure(obase, args.studies, max(3, args.repeat // 4))
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)
    print(f"\n{args.studies} studies; median / p95 ms (matches)")
    print(f"  {'query':28} {'pacs':>24} {'orthanc':>24} {'ratio':>7}")
    for name, (med, p95, n) in results["pacs"].items():
        o = results.get("orthanc", {}).get(name)
        theirs = f"{o[0]:8.1f} / {o[1]:7.1f} ({o[2]})" if o else "-"
        ratio = f"{med / o[0]:.2f}" if o else "-"
        print(f"  {name:28} {f'{med:8.1f} / {p95:7.1f} ({n})':>24} {theirs:>24} {ratio:>7}")
    print("ratio = pacs / Orthanc median (lower is better)")


if __name__ == "__main__":
    main()
