"""Tokens (issue / verify) and the token secret."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from actors.auth import ALGORITHM, Identity, TokenCodec, bearer_token, codec_for, load_secret
from actors.errors import AuthError
from config import Settings

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4  # long enough for HS512
ISSUER = "raychat"
TTL = 3600


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAYCHAT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, issuer=ISSUER, ttl_s=TTL)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "adm": False,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 60,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# -- round trip ---------------------------------------------------------------


def test_issue_verify_round_trip(codec: TokenCodec) -> None:
    assert codec.verify(codec.issue("alice")) == Identity(user_id="alice", admin=False)


def test_admin_flag_round_trips(codec: TokenCodec) -> None:
    assert codec.verify(codec.issue("root", admin=True)) == Identity("root", admin=True)


def test_token_claims(codec: TokenCodec) -> None:
    token = codec.issue("alice", now=1_000_000)
    payload = jwt.decode(token, SECRET, algorithms=[ALGORITHM], options={"verify_exp": False})
    assert payload == {
        "sub": "alice",
        "adm": False,
        "iss": ISSUER,
        "iat": 1_000_000,
        "exp": 1_000_000 + TTL,
    }


def test_only_a_true_adm_claim_is_admin(codec: TokenCodec) -> None:
    assert codec.verify(signed(claims(adm="yes"))).admin is False
    assert codec.verify(signed(claims(adm=1))).admin is False
    assert codec.verify(signed(claims(adm=None))).admin is False


def test_repr_hides_the_secret(codec: TokenCodec) -> None:
    assert SECRET not in repr(codec)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenCodec("", issuer=ISSUER, ttl_s=TTL)


@pytest.mark.parametrize("user_id", ["", "a/b", "a b", "x" * 129, "nul\x00", "\nbob"])
def test_issue_refuses_bad_user_ids(codec: TokenCodec, user_id: str) -> None:
    with pytest.raises(ValueError):
        codec.issue(user_id)


def test_issue_refuses_user_id_with_trailing_newline(codec: TokenCodec) -> None:
    with pytest.raises(ValueError):
        codec.issue("bob\n")


# -- rejected tokens ----------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(codec: TokenCodec, token: str | None) -> None:
    with pytest.raises(AuthError) as info:
        codec.verify(token)
    assert info.value.code == "unauthenticated"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b"])
def test_malformed_token(codec: TokenCodec, token: str) -> None:
    with pytest.raises(AuthError):
        codec.verify(token)


def test_wrong_secret(codec: TokenCodec) -> None:
    other = TokenCodec("another-secret-" + "x" * 64, issuer=ISSUER, ttl_s=TTL)
    with pytest.raises(AuthError):
        codec.verify(other.issue("alice"))


def test_expired(codec: TokenCodec) -> None:
    token = codec.issue("alice", now=time.time() - TTL - 120)
    with pytest.raises(AuthError) as info:
        codec.verify(token)
    assert "expired" in info.value.message


def test_tampered_payload(codec: TokenCodec) -> None:
    header, _payload, signature = codec.issue("alice").split(".")
    forged = f"{header}.{_b64(claims(sub='mallory', adm=True))}.{signature}"
    with pytest.raises(AuthError):
        codec.verify(forged)


def test_alg_none_by_hand(codec: TokenCodec) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims(adm=True))}."
    with pytest.raises(AuthError):
        codec.verify(token)


def test_alg_none_with_pyjwt(codec: TokenCodec) -> None:
    token = jwt.encode(claims(adm=True), None, algorithm="none")
    with pytest.raises(AuthError):
        codec.verify(token)


def test_other_hmac_algorithm(codec: TokenCodec) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    with pytest.raises(AuthError):
        codec.verify(token)


@pytest.mark.parametrize("missing", ["sub", "exp", "iss"])
def test_missing_required_claim(codec: TokenCodec, missing: str) -> None:
    payload = claims()
    del payload[missing]
    with pytest.raises(AuthError):
        codec.verify(signed(payload))


def test_wrong_issuer(codec: TokenCodec) -> None:
    with pytest.raises(AuthError):
        codec.verify(signed(claims(iss="someone-else")))
    other = TokenCodec(SECRET, issuer="someone-else", ttl_s=TTL)
    with pytest.raises(AuthError):
        codec.verify(other.issue("alice"))


@pytest.mark.parametrize(
    "sub",
    ["a/b", "../admin", "bob\x00", "tab\there", "x" * 129, "", "ünï"],
)
def test_bad_user_id_in_sub(codec: TokenCodec, sub: str) -> None:
    with pytest.raises(AuthError):
        codec.verify(signed(claims(sub=sub)))


@pytest.mark.parametrize("sub", ["bob\n", "admin\n"])
def test_trailing_newline_in_sub_is_rejected(codec: TokenCodec, sub: str) -> None:
    # A control character must never become part of a user id.
    with pytest.raises(AuthError):
        codec.verify(signed(claims(sub=sub)))


def test_non_string_sub(codec: TokenCodec) -> None:
    with pytest.raises(AuthError):
        codec.verify(signed(claims(sub=123)))


# -- bearer header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer   tok  ", "tok"),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


# -- the secret ---------------------------------------------------------------


def test_load_secret_generates_a_0600_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    settings = Settings(data_dir=data_dir)
    first = load_secret(settings)
    path = data_dir / "secret"
    assert path.read_text() == first
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(Settings(data_dir=data_dir)) == first


def test_a_reader_racing_the_writer_sees_no_secret_or_the_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second replica loads the secret while the first is between creating and writing."""
    settings = Settings(data_dir=tmp_path)
    real_fdopen = os.fdopen
    raced: list[str] = []

    def fdopen_then_race(fd: int, *args: Any, **kwargs: Any) -> Any:
        # The writer holds a file it has not written yet: another replica starts now.
        if not raced:
            raced.append("")  # once: the racing replica's own write is not raced
            other = threading.Thread(target=lambda: raced.append(load_secret(settings)))
            other.start()
            other.join()
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen_then_race)
    first = load_secret(settings)
    second = raced[1]
    assert second and first == second  # both use one whole secret
    assert (tmp_path / "secret").read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def _replica(settings: Settings, start: threading.Barrier, found: list[str]) -> None:
    start.wait()  # all replicas load the secret at the same moment
    found.append(load_secret(settings))


def test_replicas_starting_together_share_one_secret(tmp_path: Path) -> None:
    for round_ in range(30):
        settings = Settings(data_dir=tmp_path / str(round_))
        start = threading.Barrier(6)
        found: list[str] = []
        threads = [
            threading.Thread(target=_replica, args=(settings, start, found)) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == 6 and len(set(found)) == 1 and found[0], found
        assert (settings.secret_file).read_text() == found[0]
        assert stat.S_IMODE(settings.secret_file.stat().st_mode) == 0o600


def test_load_secret_differs_per_data_dir(tmp_path: Path) -> None:
    one = load_secret(Settings(data_dir=tmp_path / "one"))
    two = load_secret(Settings(data_dir=tmp_path / "two"))
    assert one != two


def test_configured_secret_wins(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file")
    settings = Settings(data_dir=tmp_path, secret=SecretStr("from-settings"))
    assert load_secret(settings) == "from-settings"


def test_configured_secret_creates_no_file(tmp_path: Path) -> None:
    load_secret(Settings(data_dir=tmp_path, secret=SecretStr("configured")))
    assert not (tmp_path / "secret").exists()


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYCHAT_SECRET", "env-secret")
    assert load_secret(Settings(data_dir=tmp_path)) == "env-secret"
    assert not (tmp_path / "secret").exists()


def test_codec_for_uses_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, secret=SecretStr(SECRET), token_issuer="iss-x", token_ttl_s=60
    )
    codec = codec_for(settings)
    token = codec.issue("alice")
    assert TokenCodec(SECRET, issuer="iss-x", ttl_s=60).verify(token).user_id == "alice"
    with pytest.raises(AuthError):
        TokenCodec(SECRET, issuer=ISSUER, ttl_s=60).verify(token)
