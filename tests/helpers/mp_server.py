"""A stand-in for the Materials Project API on 127.0.0.1, for the fetch-mp tests (helpers, not tests).

It answers what mp-api's MPRester asks: GET /heartbeat, and GET /materials/summary/ with the
filters fetch-mp uses (chemsys, elements, material_ids, is_stable, *_min/*_max ranges), field
projection (_fields) and paging (_skip, _limit), under the `x-api-key` header. Faults can be queued
(`fail_next`) to answer the next summary requests with 401, 429 or 5xx, or tied to ids
(`broken_ids`: 503 for as long as they are asked); every summary request is
logged with its parameters. It listens on loopback only and never reaches out.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

KEY = "k" * 16 + "0123456789abcdef"  # mp-api accepts 32-character keys only
_RANGES = {"band_gap": "band_gap", "energy_above_hull": "energy_above_hull",
           "formation_energy_per_atom": "formation_energy_per_atom"}


class MPServer:
    """`docs`: summary documents (dicts with material_id, elements, structure, ...), in answer order."""

    def __init__(self, docs: list[dict], key: str = KEY) -> None:
        self.docs, self.key = docs, key
        self.faults: list[int] = []
        self.broken_ids: set[str] = set()  # a request naming one of these answers 503, every time
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/"

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.faults.extend(statuses)

    def __enter__(self) -> "MPServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, params: dict[str, str], key: str | None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(params)
            fault = self.faults.pop(0) if self.faults else None
        if fault is None and self.broken_ids & set(params.get("material_ids", "").split(",")):
            fault = 503
        if fault is not None:
            return fault, {"detail": f"injected {fault}"}
        if key != self.key:
            return 401, {"detail": "Invalid API key"}
        docs = [d for d in self.docs if _matches(d, params)]
        skip, limit = int(params.get("_skip", 0)), int(params.get("_limit", 1000))
        fields = params.get("_fields", "").split(",") if params.get("_fields") else None
        page = [{k: d[k] for k in fields if k in d} if fields else d for d in docs[skip : skip + limit]]
        return 200, {"data": page, "meta": {"total_doc": len(docs)}}


def _matches(doc: dict, params: dict[str, str]) -> bool:
    elements = set(doc.get("elements", []))
    if "material_ids" in params and doc.get("material_id") not in params["material_ids"].split(","):
        return False
    if "chemsys" in params and "-".join(sorted(elements)) not in ["-".join(sorted(c.split("-"))) for c in params["chemsys"].split(",")]:
        return False
    if "elements" in params and not set(params["elements"].split(",")) <= elements:
        return False
    if "is_stable" in params and str(doc.get("energy_above_hull") == 0.0) != params["is_stable"]:
        return False
    for name, field in _RANGES.items():
        value = doc.get(field)
        if f"{name}_min" in params and (value is None or value < float(params[f"{name}_min"])):
            return False
        if f"{name}_max" in params and (value is None or value > float(params[f"{name}_max"])):
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server_state: MPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path.rstrip("/") == "/heartbeat":
            status, body = 200, {"db_version": "2025.09.25", "access_controlled_batch_ids": [], "version": "0.87.0"}
        elif url.path.rstrip("/") == "/materials/summary":
            status, body = self.server_state.answer(params, self.headers.get("x-api-key"))
        else:
            status, body = 404, {"detail": "Not Found"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass
