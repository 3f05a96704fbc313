"""TLS: the server with a certificate it is given, as the KurrentDB adapter uses it (``tls=true`` with
``tlsCaFile``, directly and through ``+discover``), the failures of a client that does not trust it (at
once, never a retry loop), and the options on both command lines (both or neither)."""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from orchestrator.eventstore import NO_STREAM, EventFilter, NewEvent, OperationalError
from orchestrator.eventstore.kurrent import open_kurrent_store
from orchestrator.eventstore.server import LISTENING, EventStoreServer, ServerOptions
from orchestrator.eventstore.server.__main__ import _parse
from orchestrator.eventstore.server.tls import PAIR_REQUIRED, ServerCertificate, TlsError
from tests.contract.harness import LocalServer
from tests.eventstore_server.certificates import Certificates, make_certificates
from tests.system.service import outside_settings

pytestmark = pytest.mark.timeout(60)

#: tls=true makes the client send these as call credentials; it refuses a TLS URI without them
USER = "admin:changeit"
#: how long a client that cannot connect may take to say so (it retries once, then gives up)
FAIL_WITHIN = 10.0


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the server's certificate."""
    return make_certificates(tmp_path_factory.mktemp("other-ca")).ca


@pytest.fixture
async def tls_server(tmp_path: Path, certificates: Certificates) -> AsyncIterator[EventStoreServer]:
    certificate = ServerCertificate.load(certificates.cert, certificates.key)
    server = await EventStoreServer.start(ServerOptions(tmp_path / "data", port=0, certificate=certificate))
    try:
        yield server
    finally:
        await server.stop(grace=0.1)


def tls_url(port: int, ca: Path | None, *, scheme: str = "kurrentdb", host: str = "127.0.0.1") -> str:
    query = "tls=true" + (f"&tlsCaFile={ca}" if ca is not None else "")
    return f"{scheme}://{USER}@{host}:{port}?{query}"


def _events(count: int) -> list[NewEvent]:
    return [NewEvent(uuid4(), "Happened", b'{"n": %d}' % i) for i in range(count)]


async def _append_and_read_back(url: str) -> None:
    stream = f"tls-{uuid4().hex}"
    events = _events(2)
    async with asyncio.timeout(FAIL_WITHIN):
        store = await open_kurrent_store(url)
        try:
            await store.append(stream, events, expected=NO_STREAM)
            assert [e.id for e in await store.read_stream(stream)] == [e.id for e in events]
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("scheme", "host"),
    [
        pytest.param("kurrentdb", "127.0.0.1", id="kurrentdb"),
        pytest.param("esdb", "localhost", id="esdb-localhost"),
        pytest.param("kurrentdb+discover", "127.0.0.1", id="kurrentdb+discover"),
        pytest.param("esdb+discover", "localhost", id="esdb+discover-localhost"),
    ],
)
async def test_the_adapter_appends_and_reads_over_tls(
    tls_server: EventStoreServer, certificates: Certificates, scheme: str, host: str
) -> None:
    await _append_and_read_back(tls_url(tls_server.port, certificates.ca, scheme=scheme, host=host))


async def test_a_persistent_subscription_delivers_over_tls(
    tls_server: EventStoreServer, certificates: Certificates
) -> None:
    prefix = f"tls-{uuid4().hex}-"
    events = _events(3)
    async with asyncio.timeout(FAIL_WITHIN):
        store = await open_kurrent_store(tls_url(tls_server.port, certificates.ca))
        try:
            await store.create_subscription("tls-group", filter=EventFilter(stream_prefixes=(prefix,)))
            await store.append(f"{prefix}a", events, expected=NO_STREAM)
            subscription = await store.read_subscription("tls-group")
            try:
                received = []
                async for event in subscription:
                    received.append(event.id)
                    await subscription.ack(event.id)
                    if len(received) == len(events):
                        break
            finally:
                await subscription.close()
        finally:
            await store.close()
    assert received == [e.id for e in events]


@pytest.mark.parametrize("trust", ["system roots", "another CA"])
@pytest.mark.parametrize("scheme", ["kurrentdb", "kurrentdb+discover"])
async def test_a_client_that_does_not_trust_the_certificate_fails_at_once(
    tls_server: EventStoreServer, other_ca: Path, trust: str, scheme: str
) -> None:
    url = tls_url(tls_server.port, other_ca if trust == "another CA" else None, scheme=scheme)
    if scheme.endswith("+discover"):
        url += "&maxDiscoverAttempts=2"  # the client's own retry budget for discovery (10 by default)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        async with asyncio.timeout(FAIL_WITHIN):
            await open_kurrent_store(url)
    assert time.monotonic() - started < FAIL_WITHIN


async def test_a_plaintext_client_of_a_tls_server_fails_at_once(tls_server: EventStoreServer) -> None:
    with pytest.raises(OperationalError):
        async with asyncio.timeout(FAIL_WITHIN):
            await open_kurrent_store(f"kurrentdb://127.0.0.1:{tls_server.port}?tls=false")


async def test_a_tls_client_of_an_insecure_server_fails_at_once(
    server: LocalServer, certificates: Certificates
) -> None:
    with pytest.raises(OperationalError, match="SSL"):
        async with asyncio.timeout(FAIL_WITHIN):
            await open_kurrent_store(tls_url(server.port, certificates.ca))


def test_a_certificate_and_key_that_do_not_belong_together_are_refused(certificates: Certificates) -> None:
    with pytest.raises(TlsError, match="not a usable PEM certificate"):
        ServerCertificate.load(certificates.ca, certificates.key)
    with pytest.raises(TlsError, match="no such file"):
        ServerCertificate.load(certificates.cert, certificates.key.with_name("missing.key"))
    assert "PRIVATE" not in repr(ServerCertificate.load(certificates.cert, certificates.key))


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_the_server_command_refuses_one_tls_option_without_the_other(
    given: str, certificates: Certificates, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(["--data-dir", str(tmp_path), given, str(certificates.cert)])
    assert exit_.value.code == 2
    assert PAIR_REQUIRED in capsys.readouterr().err


def _saga_orchestrator(*argv: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *argv]


def test_saga_orchestrator_eventstore_serve_refuses_one_tls_option_without_the_other(
    certificates: Certificates, tmp_path: Path
) -> None:
    command = _saga_orchestrator("eventstore", "serve", "--data-dir", str(tmp_path), "--port", "0")
    done = subprocess.run(
        [*command, "--tls-key", str(certificates.key)],
        env=outside_settings(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert PAIR_REQUIRED in done.stderr
    assert not (tmp_path / "eventstore").exists()  # refused before opening the store


@pytest.fixture
def served_by_the_cli(tmp_path: Path, certificates: Certificates) -> Iterator[int]:
    """``saga-orchestrator eventstore serve`` with the certificate, as a process; yields its port."""
    command = _saga_orchestrator("eventstore", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0")
    command += ["--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key)]
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(command, env=outside_settings(), stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], LocalServer.START_TIMEOUT)
        line = process.stdout.readline().decode() if ready else "(nothing within the start timeout)"
        assert line.startswith(LISTENING), (line, (tmp_path / "server.log").read_text())
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def test_saga_orchestrator_eventstore_serve_serves_tls(
    served_by_the_cli: int, certificates: Certificates
) -> None:
    await _append_and_read_back(tls_url(served_by_the_cli, certificates.ca))
