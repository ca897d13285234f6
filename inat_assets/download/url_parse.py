"""``httpx.URL`` for the plain URLs photos have, without running httpx's general parser on each.

httpx's parser (``httpx._urlparse.urlparse``) costs 20-22 us a URL in pure Python: control-character
scan, three regexes, IDNA and percent-encoding checks, dot-segment removal. It was 9 % of a worker's
CPU at 0 ms latency (py-spy, bench/download.py). Photo URLs are plain: ``http(s)://host[:port]/path``
with an optional query, all in characters that need no encoding. For those, :func:`parse_url` builds
the very ``ParseResult`` httpx would (checked field by field against httpx's own parse in
inat_assets_tests/download/test_url_parse.py) in about 2 us. Anything else (upper case, IDNA,
percent signs, dot segments, user info, fragments, IPv6, odd IPv4) goes to ``httpx.URL`` unchanged.

The ``ParseResult`` and the ``_uri_reference`` attribute are httpx internals (pyproject pins httpx
below 0.29; measured on 0.28.1). Both are checked at import: if they differ, every URL takes httpx's parser.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import httpx

try:
    from httpx._urlparse import ParseResult as _ParseResult

    if "_uri_reference" not in httpx.URL("http://a/").__dict__ or _ParseResult._fields != (
        "scheme", "userinfo", "host", "port", "path", "query", "fragment"
    ):  # fmt: skip
        raise ImportError("httpx.URL is built differently")
except ImportError:  # pragma: no cover - another httpx: the general parser for every URL
    _ParseResult = None  # type: ignore[assignment,misc]

# Only characters httpx leaves as they are: lower-case host (a name, or an IPv4 address checked
# below), a decimal port without a leading zero, path and query in unreserved characters plus
# the few delimiters a photo URL uses. No "%", no user info, no fragment; bounded lengths (host 253,
# path 2,001, query 1,000 characters, well under httpx's 65,536 for a whole URL).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9.-]{0,252}))(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9._~/-]{0,2000})(?:\?([A-Za-z0-9._~=&-]{1,1000}))?"
)
DEFAULT_PORTS = {"http": 80, "https": 443}  # the schemes we fetch, and their default ports
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def parse_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, the same object, built faster for plain URLs; raises as httpx.URL does."""
    match = _PLAIN_URL.fullmatch(url) if _ParseResult is not None else None
    if match is None:
        return httpx.URL(url)
    scheme, host, port, path, query = match.groups()
    if "/." in path or (_IPV4_STYLE.fullmatch(host) and not _is_ipv4(host)):
        return httpx.URL(url)  # dot segments to remove, or an address httpx refuses
    number = int(port) if port else None
    parsed = httpx.URL.__new__(httpx.URL)
    parsed._uri_reference = _ParseResult(  # type: ignore[misc]
        scheme, "", host, None if number == DEFAULT_PORTS[scheme] else number, path, query, None
    )
    return parsed


@functools.lru_cache(maxsize=1024)
def _is_ipv4(host: str) -> bool:
    """httpx's check of an IPv4-style host; cached (3 us each, and a run talks to a few hosts)."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
