"""The way out to SecureVideo: an egress proxy and a private CA, with verification always on.

The emulator serves HTTPS with a certificate from a private test CA (trustme); a CONNECT proxy
written for these tests stands between it and the client and counts the tunnels it opens.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from connect_proxy import ConnectProxy

from syncd.adapters.securevideo import Egress, SecureVideoClient, TlsError
from syncd.core.errors import AmbiguousError, ConfigError, SyncdError, TemporaryError
from syncd.emulator import Emulator, tls_context
from syncd.runtime import check
from syncd.runtime.app import open_gateway
from syncd.runtime.settings import Settings, load_settings

PROXY_PASSWORD = "Pr0xy-Canary-771"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SYNCD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SYNCD_CONFIG_FILE", "")
    monkeypatch.setenv("SYNCD_SECRETS_DIR", "")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_emulator(ca: trustme.CA, tmp_path: Path) -> Iterator[Emulator]:
    # Served from files, as `syncd emulator --tls-cert --tls-key` does.
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    with Emulator(tls=tls_context(str(cert_file), str(key_file))) as emulator:
        yield emulator


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as p:
        yield p


def _settings(emulator: Emulator, **securevideo: object) -> Settings:
    return load_settings(
        securevideo={"base_url": emulator.base_url, "api_key": "demo", "api_secret": "demo"}
        | securevideo
    )


def _port(emulator: Emulator) -> str:
    return f"127.0.0.1:{emulator.port}"


# --- through the proxy, with the private CA -----------------------------------------------------


def test_calls_go_through_the_proxy_and_trust_the_ca_bundle(
    tls_emulator: Emulator, proxy: ConnectProxy, ca_file: Path
) -> None:
    settings = _settings(tls_emulator, proxy_url=proxy.url, ca_bundle_file=str(ca_file))
    assert tls_emulator.base_url.startswith("https://")
    with open_gateway(settings) as client:
        client.probe()
        sessions = client.list_host_sessions("prov-001")
    assert sessions == []
    # Both calls through the proxy, in a CONNECT tunnel to the emulator (one kept-alive lane).
    assert proxy.connects and set(proxy.connects) == {_port(tls_emulator)}
    assert proxy.refused == []
    assert [c.path for c in tls_emulator.calls] == ["/user", "/session/0"]


@pytest.mark.parametrize("lanes", [None, 3], ids=["one-pool", "lanes"])
def test_both_transports_carry_the_egress(
    tls_emulator: Emulator, proxy: ConnectProxy, ca_file: Path, lanes: int | None
) -> None:
    egress = Egress(proxy_url=proxy.url, ca_bundle_file=ca_file)
    with SecureVideoClient(
        tls_emulator.base_url, "demo", "demo", egress=egress, max_in_flight=lanes
    ) as client:
        client.probe()
    assert proxy.connects == [_port(tls_emulator)]


def test_without_the_ca_bundle_the_call_fails_as_a_tls_error(
    tls_emulator: Emulator, proxy: ConnectProxy
) -> None:
    settings = _settings(tls_emulator, proxy_url=proxy.url)
    with open_gateway(settings) as client, pytest.raises(TlsError) as info:
        client.probe()
    message = str(info.value)
    assert message.splitlines() == [message]
    assert message.startswith("GET /user: not sent (TLS handshake failed: certificate not trusted")
    # It got as far as the proxy's tunnel; SecureVideo never saw a request.
    assert proxy.connects == [_port(tls_emulator)]
    assert tls_emulator.calls == []


def test_direct_without_the_ca_bundle_fails_too_and_check_names_the_setting(
    tls_emulator: Emulator,
) -> None:
    settings = _settings(tls_emulator)
    with pytest.raises(SyncdError) as info:
        check._credentials(settings)
    line = str(info.value)
    assert line.splitlines() == [line]
    assert "TLS handshake failed" in line and "SYNCD_SECUREVIDEO__CA_BUNDLE_FILE" in line


def test_the_environment_chooses_neither_proxy_nor_trust(
    tls_emulator: Emulator,
    proxy: ConnectProxy,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What curl and requests would obey: the proxy and the CA from the environment.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    with open_gateway(_settings(tls_emulator)) as client, pytest.raises(TlsError):
        client.probe()
    assert proxy.connects == []


def test_a_proxy_that_refuses_the_tunnel_means_nothing_was_sent(
    tls_emulator: Emulator, ca_file: Path
) -> None:
    # Not "the change may have been applied": a refused CONNECT never reached SecureVideo.
    with ConnectProxy(refuse=b"407 Proxy Authentication Required") as refusing:
        egress = Egress(proxy_url=refusing.url, ca_bundle_file=ca_file)
        client = SecureVideoClient(tls_emulator.base_url, "demo", "demo", egress=egress)
        with client, pytest.raises(TemporaryError) as info:
            client.cancel(session_id=50001)
    assert not isinstance(info.value, AmbiguousError)
    assert str(info.value) == (
        "DELETE /session/{sessionId}: not sent "
        "(the egress proxy answered 407 Proxy Authentication Required)"
    )
    assert tls_emulator.calls == []


def test_a_plain_http_emulator_is_reached_without_the_proxy_tunnel(
    proxy: ConnectProxy, ca_file: Path
) -> None:
    # Only http://localhost test servers are plain; a proxy then forwards (here: refuses) them.
    with Emulator() as emulator:
        settings = _settings(emulator, proxy_url=proxy.url, ca_bundle_file=str(ca_file))
        with open_gateway(settings) as client, pytest.raises(SyncdError):
            client.probe()
    assert proxy.refused and proxy.refused[0].startswith("GET http://127.0.0.1:")


# --- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("socks5://127.0.0.1:1080", "must be an http:// or https:// proxy URL"),
        ("ftp://proxy:21", "must be an http:// or https:// proxy URL"),
        ("proxy.example:3128", "must be an http:// or https:// proxy URL"),
        ("http://", "must name the proxy's host"),
        ("http://proxy:3128/path", "no path or query"),
        ("http://proxy:3128?x=1", "no path or query"),
        (f"http://user:{PROXY_PASSWORD}@proxy:99999", "is not a valid URL"),
    ],
)
def test_a_bad_proxy_url_is_one_line_naming_the_setting(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(securevideo={"proxy_url": value})
    assert info.value.setting == "SYNCD_SECUREVIDEO__PROXY_URL"
    assert problem in info.value.problem
    assert PROXY_PASSWORD not in str(info.value)


def test_the_proxy_password_is_never_shown() -> None:
    url = f"http://syncd:{PROXY_PASSWORD}@proxy.example.internal:3128"
    settings = load_settings(securevideo={"proxy_url": url})
    assert settings.securevideo.proxy_url == url
    shown = settings.describe()["securevideo"]
    assert isinstance(shown, dict)
    assert shown["proxy_url"] == "http://syncd:***@proxy.example.internal:3128"
    assert PROXY_PASSWORD not in repr(settings) + str(settings.describe())


def _bad_bundles(tmp_path: Path) -> list[tuple[Path, str]]:
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a binary")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return [
        (tmp_path / "missing.pem", "cannot read the CA bundle"),
        (tmp_path, "cannot read the CA bundle"),
        (not_pem, "is not a PEM CA bundle"),
        (broken, "holds a certificate OpenSSL cannot load"),
    ]


def test_a_bad_ca_bundle_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    for path, problem in _bad_bundles(tmp_path):
        with pytest.raises(ConfigError) as info:
            load_settings(securevideo={"ca_bundle_file": str(path)})
        assert info.value.setting == "SYNCD_SECUREVIDEO__CA_BUNDLE_FILE"
        assert problem in info.value.problem, path
        assert str(info.value).splitlines() == [str(info.value)]


def test_a_good_ca_bundle_and_blank_values_load(ca_file: Path) -> None:
    settings = load_settings(securevideo={"ca_bundle_file": str(ca_file), "proxy_url": " "})
    assert settings.securevideo.ca_bundle_file == ca_file
    assert settings.securevideo.proxy_url is None
    assert isinstance(Egress(ca_bundle_file=ca_file).verify(), ssl.SSLContext)
    assert Egress().verify() is True


def test_bad_values_stop_the_start_with_exit_2(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SYNCD_CONFIG_FILE": "",
        "SYNCD_SECRETS_DIR": "",
        "SYNCD_SECUREVIDEO__CA_BUNDLE_FILE": str(tmp_path / "missing.pem"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"syncd: SYNCD_SECUREVIDEO__CA_BUNDLE_FILE: cannot read the CA bundle "
        f"{tmp_path / 'missing.pem'}: No such file or directory"
    ]
