"""The start-up warnings about authentication: ``none`` on a network address is said loudly; on loopback,
or in another mode, it is not; a JWT secret the mode does not use is noted (without the secret)."""

from __future__ import annotations

from structlog.testing import capture_logs

from orchestrator.composition import warn_about_auth
from orchestrator.settings import AuthSettings, JwtSettings, ServerSettings, Settings


def events(settings: Settings, roles: tuple[str, ...] = ("api",)) -> list[dict[str, object]]:
    with capture_logs() as logs:
        warn_about_auth(settings, roles)
    return logs


def test_none_on_a_network_address_is_a_warning() -> None:
    [warning] = events(Settings(server=ServerSettings(host="0.0.0.0")))
    assert (warning["event"], warning["log_level"]) == ("auth_none_on_a_network_address", "warning")
    for host in ("127.0.0.1", "::1", "localhost"):
        assert events(Settings(server=ServerSettings(host=host))) == []
    assert events(Settings(server=ServerSettings(host="0.0.0.0")), ("engine",)) == []
    trusted = Settings(server=ServerSettings(host="10.0.0.5"), auth=AuthSettings(mode="trusted-header"))
    assert events(trusted) == []


def test_an_unused_jwt_secret_is_noted_without_the_secret() -> None:
    secret = "s3cret-" * 6
    [note] = events(Settings(auth=AuthSettings(jwt=JwtSettings(secret=secret))))  # type: ignore[arg-type]
    assert note["event"] == "auth_jwt_secret_not_used"
    assert secret not in repr(note)
