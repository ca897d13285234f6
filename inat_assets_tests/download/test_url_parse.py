"""parse_url builds exactly the httpx.URL that httpx's parser builds, and skips that parser for plain URLs."""

from __future__ import annotations

import itertools

import httpx
import pytest

from inat_assets.download import url_parse
from inat_assets.download.url_parse import parse_url

PLAIN = [
    "https://inaturalist-open-data.s3.amazonaws.com/photos/12345678/medium.jpg",
    "https://static.inaturalist.org/photos/12345678/original.jpeg?1700000000",
    "http://127.0.0.1:8765/photos/1/small.png",
    "https://example.org:443/a",  # the default port: httpx drops it
    "http://example.org:80/a",
    "https://example.org:65535/a~b_c-d.e",
    "http://example.org:99999/a",  # httpx parses any number (the fetcher refuses it)
    "http://a..b-/x",  # odd but unencoded: httpx keeps it as it is
    "http://example.org/",
    "http://example.org/a//b/",
    "http://example.org/a?x=1&y=2",
    "http://example.org/a.b/c.",
]
NOT_PLAIN = [
    "HTTPS://Example.org/A",  # upper case scheme and host: lowered
    "https://example.org",  # no path
    "https://example.org/a/./b",  # dot segments: removed
    "https://example.org/a/../b",
    "https://example.org/.hidden",
    "https://example.org/a%20b",  # percent-encoded
    "https://example.org/a b",
    "https://example.org/a?",  # empty query
    "https://example.org/a#frag",
    "https://user:pw@example.org/a",
    "https://[::1]:8443/a",
    "https://bücher.example/a",  # IDNA
    "https://example.org:08/a",  # leading zero
    "https://example.org:0/a",
    "https://example.org:/a",
    "https://999.1.1.1/a",  # invalid IPv4: httpx refuses
    "https://1.2.3.04/a",
    "https://1.2.3/a",
    "ftp://example.org/a",
    "https://example.org/a\tb",
    "example.org/a",
    "",
]


def _parse(build, url: str) -> tuple:
    try:
        parsed = build(url)
    except Exception as exc:  # compared by type and message
        return ("error", type(exc), str(exc))
    return (parsed._uri_reference, str(parsed), parsed.host, parsed.port, parsed.raw_path, parsed.netloc)


@pytest.mark.parametrize("url", PLAIN + NOT_PLAIN)
def test_same_result_as_httpx(url: str) -> None:
    assert _parse(parse_url, url) == _parse(httpx.URL, url)


def test_combinations_same_result_as_httpx() -> None:
    schemes = ["http", "https", "HTTP", "ftp"]
    hosts = ["example.org", "Example.org", "a-b.c", "10.0.0.1", "300.0.0.1", "01.2.3.4", "[::1]", "xn--bcher-kva.example"]
    ports = ["", ":80", ":443", ":8080", ":0", ":007", ":70000", ":"]
    paths = ["", "/", "/photos/1/medium.jpg", "/a/./b", "/a/..", "/a%2Fb", "/ä", "/a~b/_c-.d", "/a;b"]
    queries = ["", "?", "?1700000000", "?a=b&c=d", "?a b", "?a%20b", "?a/b"]
    for scheme, host, port, path, query in itertools.product(schemes, hosts, ports, paths, queries):
        url = f"{scheme}://{host}{port}{path}{query}"
        assert _parse(parse_url, url) == _parse(httpx.URL, url), url


def test_plain_urls_skip_httpx_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: a plain URL never reaches httpx's 20 us parser (so this test can fail)."""
    assert url_parse._ParseResult is not None, "httpx internals changed: every URL takes the slow parser"

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("httpx's parser was called")

    monkeypatch.setattr(httpx._urls, "urlparse", refuse)
    for url in PLAIN:
        parse_url(url)
    with pytest.raises(AssertionError, match="parser was called"):
        parse_url(NOT_PLAIN[0])


def test_request_from_parsed_url_is_the_same() -> None:
    url = "https://static.inaturalist.org:8443/photos/1/medium.jpg?99"
    fast, slow = httpx.Request("GET", parse_url(url)), httpx.Request("GET", httpx.URL(url))
    assert fast.url == slow.url and fast.url.raw_path == slow.url.raw_path and fast.headers == slow.headers
