"""A remote simulator server, standard library plus numpy: the wire format by example.

    python examples/remote_simulator.py --port 8765
    SBI_SERVICE_SIMULATOR_HOSTS=127.0.0.1:8765 sbi-service simulators register noisy \\
        --url http://127.0.0.1:8765/simulate --prior prior.json --x-shape 2

POST /simulate with either

    Content-Type: application/json      {"theta": [[...], ...], "seed": S}
    -> 200 application/json             {"x": [[...], ...]}

or  Content-Type: application/x-npy     theta as an .npy body, the seed in X-Seed
    -> 200 application/x-npy            x as an .npy body

The simulator here is x = theta + 0.1 * noise (x_shape = (dim_theta,)), the noise drawn
from a generator seeded by S, so the same batch and seed give the same x. A row
whose theta has a NaN gets a null (JSON) or NaN (npy) row back: a failed simulation.
Any other path or content type gets a 4xx. Write the same in any language.
"""

from __future__ import annotations

import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def simulate(theta: np.ndarray, seed: int) -> np.ndarray:
    """theta (n, d) -> x (n, d): theta plus N(0, 0.1^2) noise from a generator seeded by seed."""
    rng = np.random.default_rng(seed)
    return (theta + 0.1 * rng.standard_normal(theta.shape)).astype(np.float32)


class Handler(BaseHTTPRequestHandler):
    """POST /simulate: JSON or .npy in, the same format out."""

    simulator = staticmethod(simulate)

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        if self.path != "/simulate":
            return self._answer(404, "application/json", b'{"error": "POST /simulate"}')
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if kind == "application/x-npy":
                theta = np.load(io.BytesIO(body), allow_pickle=False)
                x = self.simulator(np.asarray(theta, dtype=np.float64), int(self.headers["X-Seed"]))
                out = io.BytesIO()
                np.save(out, x, allow_pickle=False)
                return self._answer(200, "application/x-npy", out.getvalue())
            if kind == "application/json":
                request = json.loads(body)
                theta = np.asarray(request["theta"], dtype=np.float64)
                x = self.simulator(theta, int(request["seed"]))
                rows = [None if np.isnan(r).any() else r.tolist() for r in x]
                return self._answer(200, "application/json", json.dumps({"x": rows}).encode())
        except (KeyError, ValueError, TypeError) as e:
            return self._answer(400, "application/json", json.dumps({"error": str(e)}).encode())
        return self._answer(415, "application/json", b'{"error": "JSON or application/x-npy"}')

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def make_server(host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """The server, not yet serving (``port=0``: any free port, see ``server_address``)."""
    return ThreadingHTTPServer((host, port), Handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = make_server(args.host, args.port)
    print(f"remote simulator on http://{args.host}:{server.server_address[1]}/simulate")
    server.serve_forever()
