"""The SSRF guard's URL and address rules (pbxcal/net/guard.py, addresses.py), no network."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from pbxcal.errors import InputError
from pbxcal.net import AddressGuard, HostNotFound, UrlRefused, check_url
from pbxcal.net.addresses import AddressPolicy, embedded_ipv4


def fake_resolver(answers: dict[str, Sequence[str]]) -> object:
    calls: list[str] = []

    def resolve(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        if host not in answers:
            raise OSError(-2, "Name or service not known")
        return answers[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


PUBLIC = fake_resolver({"cal.example": ["93.184.216.34", "2606:2800:220:1::1"]})


def nothing_resolves(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"the guard must refuse {host!r} without asking DNS")


HOSTILE = [
    ("https://127.0.0.1/", "loopback"),
    ("https://localhost/", "loopback"),  # through the system resolver (/etc/hosts)
    ("https://[::1]/", "loopback"),
    ("https://10.0.0.1/", "private network"),
    ("https://172.16.0.1/", "private network"),
    ("https://192.168.1.1/", "private network"),
    ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("https://169.254.1.1/", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fd00::1]/", "unique local"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),
    ("https://[::ffff:7f00:1]/", "loopback"),
    ("https://[::127.0.0.1]/", "loopback"),
    ("https://[64:ff9b::7f00:1]/", "loopback"),
    ("https://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
    ("https://[2002:a00:1::1]/", "private network"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://[::]/", "unspecified"),
    ("https://0.1.2.3/", "this network"),
    ("https://100.64.0.1/", "carrier-grade NAT"),
    ("https://224.0.0.1/", "multicast"),
    ("https://[ff02::1]/", "multicast"),
    ("https://[fec0::1]/", "site-local"),
    ("https://192.0.2.10/", "documentation"),
    ("https://[2001:db8::1]/", "documentation"),
    ("https://255.255.255.255/", "reserved"),
    ("https://198.18.0.1/", "benchmarking"),
    ("https://2130706433/", "unusual notation"),
    ("https://0x7f000001/", "unusual notation"),
    ("https://017700000001/", "unusual notation"),
    ("https://0x7f.1/", "unusual notation"),
    ("https://127.1/", "unusual notation"),
    ("https://127.0.0.01/", "unusual notation"),
    ("http://cal.example/", "only https://"),
    ("ftp://cal.example/", "only https://"),
    ("file:///etc/passwd", "only https://"),
    ("cal.example/dav", "must start with https://"),
    ("https://user:pass@cal.example/", "user name or password"),
    ("https://cal.example\\@127.0.0.1/", "user name or password"),
    ("https://:@cal.example/", "user name or password"),
    ("https://[fe80::1%25eth0]/", "zone"),
    ("https://cal..example/", "not a valid host name"),
    ("https://-cal.example/", "not a valid host name"),
    ("https:///path", "no host name"),
    ("https://cal.example:0/", "port 0"),
    ("https://cal.example:99999/", "not a usable address"),
]


@pytest.mark.parametrize(("url", "words"), HOSTILE)
def test_hostile_urls_are_refused_with_a_reason(url: str, words: str) -> None:
    resolver = nothing_resolves if "localhost" not in url else None
    with pytest.raises(UrlRefused) as refused:
        if resolver is None:
            check_url(url)  # the real system resolver: localhost is in /etc/hosts
        else:
            check_url(url, resolver=resolver)
    message = str(refused.value)
    assert words in message
    assert "\n" not in message
    assert isinstance(refused.value, InputError)


def test_refusal_names_address_and_host() -> None:
    resolver = fake_resolver({"cal.example": ["10.0.0.5"]})
    with pytest.raises(UrlRefused) as refused:
        check_url("https://cal.example/dav/", resolver=resolver)  # type: ignore[arg-type]
    assert str(refused.value) == "the address 10.0.0.5 of cal.example is a private network address"


def test_a_public_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = fake_resolver({"cal.example": ["93.184.216.34", "192.168.1.7"]})
    with pytest.raises(UrlRefused, match=r"192\.168\.1\.7 of cal\.example is a private"):
        check_url("https://cal.example/", resolver=resolver)  # type: ignore[arg-type]


def test_a_refusal_never_echoes_secrets() -> None:
    resolver = fake_resolver({"cal.example": ["10.1.1.1"]})
    for url in (
        "https://anna:s3cret@cal.example/?token=t0ken",
        "https://cal.example/feed.ics?token=t0ken#frag",
        "http://anna:s3cret@cal.example/?token=t0ken",
        "https://cal.example:99999/?token=t0ken",
    ):
        with pytest.raises(UrlRefused) as refused:
            check_url(url, resolver=resolver)  # type: ignore[arg-type]
        text = str(refused.value)
        assert "s3cret" not in text and "t0ken" not in text and "anna" not in text


def test_a_public_url_passes_with_every_address() -> None:
    checked = check_url("https://Cal.Example:8443/dav/?x=1", resolver=PUBLIC)  # type: ignore[arg-type]
    assert checked.host == "cal.example"
    assert checked.port == 8443
    assert checked.addresses == (
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1::1"),
    )
    assert checked.url == "https://Cal.Example:8443/dav/?x=1"


def test_webcal_is_fetched_over_https() -> None:
    checked = check_url("webcal://cal.example/a.ics", resolver=PUBLIC)  # type: ignore[arg-type]
    assert checked.url == "https://cal.example/a.ics"
    assert checked.port == 443


def test_public_ip_literals_pass_without_dns() -> None:
    assert check_url("https://93.184.216.34/", resolver=nothing_resolves).port == 443
    assert check_url("https://[2606:2800:220:1::1]:444/", resolver=nothing_resolves).port == 444
    # NAT64 and IPv4-mapped forms of a public address are that public address
    check_url("https://[64:ff9b::808:808]/", resolver=nothing_resolves)


def test_an_idn_host_is_resolved_in_its_ascii_form() -> None:
    resolver = fake_resolver({"xn--bcher-kva.example": ["93.184.216.34"]})
    checked = check_url("https://bücher.example/", resolver=resolver)  # type: ignore[arg-type]
    assert checked.host == "xn--bcher-kva.example"


def test_an_invalid_idn_is_refused() -> None:
    with pytest.raises(UrlRefused, match="not a valid host name"):
        check_url("https://a\u200db.example/", resolver=nothing_resolves)


def test_allow_networks_lets_loopback_through() -> None:
    checked = check_url("https://127.0.0.1:8443/", ["127.0.0.0/8"], resolver=nothing_resolves)
    assert checked.addresses == (ipaddress.ip_address("127.0.0.1"),)
    resolver = fake_resolver({"radicale.test": ["127.0.0.2"]})
    check_url("https://radicale.test/", ["127.0.0.0/8"], resolver=resolver)  # type: ignore[arg-type]
    # the allowed range is exactly that range: 10/8 and the metadata address stay refused
    with pytest.raises(UrlRefused, match="private"):
        check_url("https://10.0.0.1/", ["127.0.0.0/8"], resolver=nothing_resolves)
    with pytest.raises(UrlRefused, match="metadata"):
        check_url("https://169.254.169.254/", ["127.0.0.0/8"], resolver=nothing_resolves)


def test_every_answer_must_be_allowed_not_just_one() -> None:
    resolver = fake_resolver({"mixed.test": ["127.0.0.1", "10.0.0.1"]})
    with pytest.raises(UrlRefused, match=r"10\.0\.0\.1 of mixed\.test"):
        check_url("https://mixed.test/", ["127.0.0.0/8"], resolver=resolver)  # type: ignore[arg-type]


def test_an_unknown_host_is_host_not_found() -> None:
    with pytest.raises(HostNotFound, match=r"nowhere\.example was not found"):
        check_url("https://nowhere.example/", resolver=PUBLIC)  # type: ignore[arg-type]


def test_a_resolver_answering_garbage_is_refused() -> None:
    resolver = fake_resolver({"odd.example": ["not-an-ip"]})
    with pytest.raises(UrlRefused, match="not an IP address"):
        check_url("https://odd.example/", resolver=resolver)  # type: ignore[arg-type]


def test_bad_allow_networks_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        AddressGuard(["10.0.0.0/33"])


def test_embedded_ipv4_forms() -> None:
    ten = ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ten
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::a00:1")) == ten
    assert embedded_ipv4(ipaddress.ip_address("::ffff:0:a00:1")) == ten
    assert embedded_ipv4(ipaddress.ip_address("2002:a00:1::")) == ten
    assert embedded_ipv4(ipaddress.ip_address("::1")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:2800:220:1::1")) is None


def test_policy_allows_mapped_form_of_an_allowed_ipv4() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) == "a loopback address"
