"""Remote HTTP simulators: the service POSTs theta batches to a URL and gets x back.

The wire format (README "Remote simulators", CONTRACT): a POST of

    Content-Type: application/json     {"theta": [[...], ...], "seed": S}
    -> 200 {"x": [[...], ...]}          x: (n, *x_shape); null or NaN marks a failed row

or, with ``"format": "npy"``, ``Content-Type: application/x-npy`` bodies both ways
(theta as .npy, the seed in the ``X-Seed`` header; answered with x as .npy).

Safety. The URL's host must be on ``SBI_SERVICE_SIMULATOR_HOSTS`` (``host`` or
``host:port``, compared exactly, case-insensitively; empty: no remote simulator is
allowed). The name is resolved once per batch and the connection goes to that
address (the Host header and TLS server name keep the name), so a DNS answer that
changes between the check and the connection cannot send the request elsewhere
(DNS rebinding), and an allowed name is never matched by a longer or shorter one
(``sim.example.org`` does not allow ``sim.example.org.evil.net``). Redirects are never
followed (a 3xx fails the batch). Batches of ``batch_size`` rows are sent with at
most ``max_concurrency`` in flight; a timeout, a connection error or a 5xx is retried
``retries`` times with exponential backoff, a 3xx or 4xx fails at once.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import torch
from torch import Tensor

from sbi_service.errors import UserError

FORMATS = ("json", "npy")


def check_url(url: str, allowed_hosts: list[str]) -> tuple[str, int]:
    """(host, port) of an http(s) URL whose host is allowed; ``UserError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"url {url!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UserError(f"url {url!r} must not carry credentials")
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
    if not allowed:
        raise UserError(
            "remote simulators are off: no host is allowed (set SBI_SERVICE_SIMULATOR_HOSTS "
            f"to include {host!r} or '{host}:{port}')"
        )
    if host not in allowed and f"{host}:{port}" not in allowed:
        raise UserError(
            f"host {host!r} of url {url!r} is not on SBI_SERVICE_SIMULATOR_HOSTS "
            f"({', '.join(sorted(allowed))})"
        )
    return host, port


def _resolve(host: str, port: int) -> str:
    """One address of ``host`` (an IP literal is its own address)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConnectionError(f"cannot resolve {host!r}: {e}") from None
    return infos[0][4][0]


@dataclass
class RemoteSimulator:
    """A vectorized simulator ``theta (n, d) -> x (n, *x_shape)`` behind a URL."""

    url: str
    x_shape: tuple[int, ...]
    allowed_hosts: list[str]
    format: str = "json"
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5  # the wait before retry r is backoff_s * 2**r
    batch_size: int = 1000
    max_concurrency: int = 4
    _client: httpx.Client | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.host, self.port = check_url(self.url, self.allowed_hosts)
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Batches of theta to the URL, each with a seed drawn from ``generator``."""
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        batches = list(torch.split(theta, self.batch_size))
        seeds = torch.randint(0, 2**31 - 1, (len(batches),), generator=gen).tolist()
        with ThreadPoolExecutor(min(self.max_concurrency, len(batches))) as pool:
            xs = list(pool.map(self._batch, batches, seeds))
        return torch.cat(xs)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(follow_redirects=False, trust_env=False)
            return self._client

    def _batch(self, theta: Tensor, seed: int) -> Tensor:
        for attempt in range(self.retries + 1):
            try:
                return self._post(theta, seed)
            except (httpx.TransportError, ConnectionError, _ServerError) as e:
                if attempt == self.retries:
                    raise RuntimeError(
                        f"remote simulator {self.url} failed {attempt + 1} times: {e}"
                    ) from None
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _post(self, theta: Tensor, seed: int) -> Tensor:
        address = _resolve(self.host, self.port)
        parts = urlsplit(self.url)
        literal = f"[{address}]" if ":" in address else address
        target = urlunsplit(parts._replace(netloc=f"{literal}:{self.port}"))
        headers = {"Host": parts.netloc.rpartition("@")[2]}
        extensions = {"sni_hostname": self.host} if parts.scheme == "https" else {}
        array = theta.numpy().astype(np.float32)
        if self.format == "npy":
            body = io.BytesIO()
            np.save(body, array, allow_pickle=False)
            headers.update({"Content-Type": "application/x-npy", "X-Seed": str(seed)})
            kwargs: dict[str, Any] = {"content": body.getvalue()}
        else:
            kwargs = {"json": {"theta": array.tolist(), "seed": seed}}
        response = self._http().post(
            target, headers=headers, timeout=self.timeout_s, extensions=extensions, **kwargs
        )
        if response.status_code >= 500:
            raise _ServerError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            why = "redirects are not followed" if 300 <= response.status_code < 400 else ""
            raise UserError(
                f"remote simulator {self.url} answered HTTP {response.status_code}"
                + (f" ({why})" if why else f": {response.text[:200]}")
            )
        return self._decode(response, len(theta))

    def _decode(self, response: httpx.Response, n: int) -> Tensor:
        try:
            if self.format == "npy":
                x = np.load(io.BytesIO(response.content), allow_pickle=False)
            else:
                nan_row = np.full(self.x_shape, np.nan).tolist()
                x = np.array([nan_row if r is None else r for r in response.json()["x"]], float)
            x = np.asarray(x, dtype=np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"remote simulator {self.url} answered something that is not x "
                f"({type(e).__name__}: {e}); expected {self.format} of shape (n, *x_shape)"
            ) from None
        if x.shape[:1] != (n,):
            rows = x.shape[0] if x.ndim else 0
            raise UserError(
                f"remote simulator {self.url} answered {rows} rows of x for {n} rows of theta"
            )
        return torch.from_numpy(x)


class _ServerError(Exception):
    """A 5xx answer: retried."""
