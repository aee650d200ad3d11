"""GET an image URL without reaching what a client must not: the hardened fetch.

A prompt's ``http(s)://`` URL is the client's choice, so the fetch is an open door into the
server's network unless every hop is checked. ``http_get``:

- resolves the host (off-thread, within the deadline) and refuses it unless every address it
  connects to is public: loopback, private, link-local (169.254.169.254), shared, multicast,
  reserved and unspecified addresses are refused, IPv4 and IPv6, IPv4 embedded in IPv6
  (mapped, 6to4, NAT64) judged as the IPv4 address. ``allow_private`` lifts this;
- connects to the address it checked (the socket is handed to ``http.client``), so a second
  DNS answer cannot swap in another address (no rebinding window); TLS verifies the
  certificate for the URL's host name;
- follows redirects itself, at most ``MAX_REDIRECTS``, each hop checked again (http/https
  only, public addresses only);
- bounds the whole fetch by ``deadline`` (every socket wait is the time left) and the body by
  ``max_bytes`` (a larger ``Content-Length`` is refused before reading; otherwise reading
  stops one byte past the limit).

Errors are ``ImageInputError``s worded as reqwest's (TGI's HTTP client). Proxy variables are
not honoured: an image fetch goes straight to the checked address.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import SplitResult, urljoin, urlsplit

from tgi_vlm.errors import ImageInputError

__all__ = ["MAX_REDIRECTS", "http_get", "is_public_address"]

MAX_REDIRECTS = 10  # reqwest's default redirect policy
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_SIZE = 1 << 16
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# getaddrinfo has no timeout of its own; a few threads let a request give up on a slow DNS
# answer at its deadline (the lookup finishes in the background).
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="image-dns")


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal, IPv6 scope allowed) is one a fetch may reach."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def http_get(url: str, *, deadline: float, max_bytes: int, allow_private: bool) -> bytes:
    """The body of GET ``url``, redirects followed, within ``deadline`` (``time.monotonic``).

    Raises:
        ImageInputError: ``Could not fetch image: ...`` (refused address or scheme, network
            error, timeout, too many redirects) or ``Image size ... exceeds ...``.
    """
    for _ in range(MAX_REDIRECTS + 1):
        sock, response = _request(url, deadline, allow_private)
        try:
            location = response.getheader("Location")
            if response.status not in _REDIRECT_STATUSES or location is None:
                return _read_body(url, sock, response, deadline, max_bytes)
        finally:
            response.close()
            sock.close()
        target = urljoin(url, location.strip())
        scheme = urlsplit(target).scheme
        if scheme not in ("http", "https"):
            raise ImageInputError.fetch_failed(
                f"error following redirect for url ({url}): a redirect to a {scheme or 'relative'}"
                " URL is not allowed"
            )
        url = target
    raise ImageInputError.fetch_failed(
        f"error following redirect for url ({url}): too many redirects"
    )


def _request(
    url: str, deadline: float, allow_private: bool
) -> tuple[socket.socket, http.client.HTTPResponse]:
    """One GET of ``url`` (no redirect followed): the socket (kept, to bound every later
    wait: ``http.client`` lets go of it when the answer closes the connection) and the
    response. The caller closes both."""
    parts, host, port = _split(url)
    try:
        sock = _connect(url, host, port, deadline, allow_private)
    except (OSError, UnicodeError) as err:  # DNS, refused, unreachable, timeout
        raise _send_error(url, err) from err
    connection = http.client.HTTPConnection(host, port)
    try:
        if parts.scheme == "https":
            sock = _tls_context().wrap_socket(sock, server_hostname=host)
        connection.sock = sock
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "*/*"}
        connection.request("GET", target, headers=headers)
        sock.settimeout(_time_left(deadline))
        return sock, connection.getresponse()
    except (OSError, http.client.HTTPException) as err:  # TLS, reset, timeout, bad answer
        connection.close()
        sock.close()
        raise _send_error(url, err) from err


def _split(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, host and port; reqwest's ``builder error`` when it cannot be used."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname
    except ValueError as err:
        raise ImageInputError.fetch_failed("builder error") from err
    if not host or any(c <= " " or c == "\x7f" for c in url):
        raise ImageInputError.fetch_failed("builder error")
    return parts, host, port


def _connect(url: str, host: str, port: int, deadline: float, allow_private: bool) -> socket.socket:
    """A socket connected to an allowed address of ``host`` (tried in DNS order)."""
    future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = future.result(timeout=_time_left(deadline))
    allowed = [info for info in infos if allow_private or is_public_address(str(info[4][0]))]
    if not allowed:
        refused = infos[0][4][0] if infos else host
        raise ImageInputError.fetch_failed(
            f"error sending request for url ({url}): {refused} is not a public address"
        )
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in allowed:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(address)
        except OSError as err:
            sock.close()
            error = err
            continue
        return sock
    raise error


def _read_body(
    url: str,
    sock: socket.socket,
    response: http.client.HTTPResponse,
    deadline: float,
    max_bytes: int,
) -> bytes:
    """The body, read as it arrives, each wait bounded by the time left."""
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ImageInputError.too_large(int(declared), max_bytes)
    parts: list[bytes] = []
    num_bytes = 0
    try:
        while num_bytes <= max_bytes:
            sock.settimeout(_time_left(deadline))
            part = response.read1(min(_READ_SIZE, max_bytes + 1 - num_bytes))
            if not part:
                break
            parts.append(part)
            num_bytes += len(part)
    except (OSError, http.client.HTTPException) as err:
        raise ImageInputError.fetch_failed(
            f"error decoding response body for url ({url}): {_reason(err)}"
        ) from err
    if num_bytes > max_bytes:
        raise ImageInputError.too_large(num_bytes, max_bytes)
    return b"".join(parts)


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("operation timed out")
    return left


def _send_error(url: str, err: BaseException) -> ImageInputError:
    return ImageInputError.fetch_failed(f"error sending request for url ({url}): {_reason(err)}")


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):  # socket.timeout and futures' TimeoutError are this
        return "operation timed out"
    return str(err) or type(err).__name__


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()
