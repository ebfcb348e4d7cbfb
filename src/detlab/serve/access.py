"""Who may call ``detlab serve``: the Host a request names, where a browser sent it from, a token.

Three checks, in :class:`CallerCheck` (ASGI middleware), before anything else reads the request:

1. **Host** (DNS rebinding: a page of ``evil.example`` whose name the attacker points at
   127.0.0.1 would otherwise be a same-origin page of this server, able to read its answers):
   the Host header must name this machine (``localhost``, an IP address: a browser only sends one
   when the page's own address is that IP, which no attacker's name can give), the address the
   server binds, or a name of :attr:`Access.allow_hosts`. Else 400.
2. **Origin** (cross-site request forgery: any web page may POST a multipart form to a local
   server, a "simple" request a browser sends without asking): a request that is not a GET, HEAD
   or OPTIONS is refused (403) when its ``Origin`` is not this server's own (``null`` included)
   or its ``Sec-Fetch-Site`` says another site sent it. Clients other than browsers send neither
   header and pass.
3. **Token** (:attr:`Access.token`, ``detlab serve --token`` or ``$DETLAB_SERVE_TOKEN``): every
   ``/api/`` request must carry ``Authorization: Bearer TOKEN`` (401 otherwise). The page itself,
   its static files and ``/healthz`` stay open, so the page can load and ask for the token (it
   reads it once from the URL fragment, ``http://HOST:PORT/#token=TOKEN``, which browsers never
   send to a server, then keeps it in the tab's session storage).

A server bound to an address other than this machine's loopback refuses to start without a token
unless told ``insecure`` (:func:`check_exposure`).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
from urllib.parse import urlsplit

from detlab.serve.limits import send_json

TOKEN_VARIABLE = "DETLAB_SERVE_TOKEN"
LOCAL_NAMES = ("localhost", "localhost.localdomain", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OTHER_SITES = ("cross-site", "same-site")  # same-site: another port or subdomain, another origin


@dataclasses.dataclass
class Access:
    """``token``: required as ``Authorization: Bearer`` on every ``/api/`` request (``None``: no
    token); ``allow_hosts``: Host names accepted besides this machine's and ``host``; ``host``:
    the address the server binds (its name is accepted as a Host)."""

    token: str | None = None
    allow_hosts: tuple[str, ...] = ()
    host: str = "127.0.0.1"

    def __post_init__(self):
        if self.token is not None and (not self.token or not self.token.isprintable() or " " in self.token):
            raise ValueError(
                "the token must be printable text without spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        self.allow_hosts = tuple(self.allow_hosts)

    def host_allowed(self, name: str) -> bool:
        """Whether a Host header's name (no port, no brackets) names this server."""
        name = name.lower().rstrip(".")
        if name in LOCAL_NAMES or name == self.host.lower() or name in (h.lower() for h in self.allow_hosts):
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """``ValueError`` for a server other machines could reach with no token, unless ``insecure``."""
    if not is_loopback(host) and not token and not insecure:
        raise ValueError(
            f"--host {host} lets other machines reach the server, which then needs a token: give --token "
            f"(or set ${TOKEN_VARIABLE}), or --insecure to serve anyone who can reach it"
        )


def split_host(value: str) -> tuple[str, str]:
    """A Host header -> ``(name, port)`` (``"[::1]:8000"`` -> ``("::1", "8000")``; port ``""`` if none)."""
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name, port


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the server the ``Host`` header names (scheme aside)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = "443" if parts.scheme == "https" else "80"
    origin_name, origin_port = split_host(parts.netloc.lower())
    host_name, host_port = split_host(host.lower())
    return origin_name == host_name and (origin_port or default) == (host_port or default)


class CallerCheck:
    """ASGI middleware: the Host, Origin and token checks of the module's text."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, message, headers = refusal
                return await send_json(send, status, {"error": message}, headers)
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str, dict[str, str]] | None:
        """``(status, message, headers)`` of the answer refusing this request, or ``None``."""
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers") or []
        }
        host = headers.get("host", "")
        if not self.access.host_allowed(split_host(host)[0]):
            return (
                400,
                f"this server does not answer to the host {host[:100]!r} (detlab serve --allow-host adds names)",
                {},
            )
        if scope.get("method", "GET") not in SAFE_METHODS:
            origin, site = headers.get("origin"), headers.get("sec-fetch-site", "").lower()
            if (origin is not None and not same_origin(origin, host)) or site in OTHER_SITES:
                return 403, "requests from other web sites are refused (Origin / Sec-Fetch-Site)", {}
        token = self.access.token
        if token is not None and scope.get("path", "").startswith("/api/"):
            scheme, _, sent = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
                return (
                    401,
                    "this server needs its token: send Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"},
                )
        return None
