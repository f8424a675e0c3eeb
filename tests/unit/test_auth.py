"""Connection and subscription tokens: HMAC JWTs with Centrifugo's claim names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from tether.auth import (
    mint_connection_token,
    mint_subscription_token,
    verify_connection_token,
    verify_subscription_token,
)
from tether.errors import TokenError

SECRET = "s" * 64  # long enough for HS512 (PyJWT warns below the hash size)
OTHER_SECRET = "o" * 64


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_token(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET) -> str:
    """A JWT signed with HMAC-SHA256 whatever its header says (to forge headers)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def token(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def rejection(token_text: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_connection_token(token_text, SECRET)
    return info.value


# -- accepted -----------------------------------------------------------------------------


def test_minted_connection_token_verifies_to_its_user() -> None:
    claims = verify_connection_token(mint_connection_token(SECRET, "alice"), SECRET)
    assert claims.user == "alice"
    assert claims.expire_at is None
    assert claims.info is None
    assert claims.channels == ()


def test_token_with_ttl_expires_at_its_exp_claim() -> None:
    before = int(time.time())
    claims = verify_connection_token(mint_connection_token(SECRET, "alice", ttl=60), SECRET)
    assert claims.expire_at is not None
    assert before + 59 <= claims.expire_at <= int(time.time()) + 60


def test_info_claim_is_kept_as_raw_json() -> None:
    minted = mint_connection_token(SECRET, "alice", info={"name": "Alice", "tags": [1, 2]})
    claims = verify_connection_token(minted, SECRET)
    assert claims.info is not None
    assert json.loads(claims.info) == {"name": "Alice", "tags": [1, 2]}


def test_channels_claim_lists_server_side_subscriptions() -> None:
    minted = mint_connection_token(SECRET, "alice", channels=["news", "chat:lobby"])
    assert verify_connection_token(minted, SECRET).channels == ("news", "chat:lobby")


def test_empty_user_is_a_valid_anonymous_user() -> None:
    assert verify_connection_token(token({"sub": ""}), SECRET).user == ""


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_every_hmac_algorithm_is_accepted(algorithm: str) -> None:
    assert verify_connection_token(token({"sub": "u"}, algorithm=algorithm), SECRET).user == "u"


def test_subscription_token_verifies_to_user_and_channel() -> None:
    minted = mint_subscription_token(SECRET, "alice", "private:room", ttl=60, info={"r": 1})
    claims = verify_subscription_token(minted, SECRET)
    assert (claims.user, claims.channel) == ("alice", "private:room")
    assert claims.expire_at is not None
    assert claims.info == b'{"r":1}'


# -- rejected -----------------------------------------------------------------------------


def test_expired_token_is_rejected_as_expired() -> None:
    error = rejection(token({"sub": "alice", "exp": int(time.time()) - 10}))
    assert error.expired is True


def test_expired_subscription_token_is_rejected_as_expired() -> None:
    expired = token({"sub": "alice", "channel": "c", "exp": int(time.time()) - 10})
    with pytest.raises(TokenError) as info:
        verify_subscription_token(expired, SECRET)
    assert info.value.expired is True


def test_tampered_signature_is_rejected() -> None:
    header, payload, signature = mint_connection_token(SECRET, "alice").split(".")
    forged = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert rejection(f"{header}.{payload}.{forged}").expired is False


def test_tampered_claims_are_rejected() -> None:
    header, _, signature = mint_connection_token(SECRET, "alice").split(".")
    payload = b64url(json.dumps({"sub": "admin"}).encode())
    assert rejection(f"{header}.{payload}.{signature}").expired is False


def test_token_signed_with_another_secret_is_rejected() -> None:
    assert rejection(token({"sub": "alice"}, secret=OTHER_SECRET)).expired is False


def test_alg_none_is_rejected() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "alice"}).encode())
    rejection(f"{header}.{payload}.")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_algorithm_header_is_rejected_even_with_a_valid_hmac(alg: str) -> None:
    # Algorithm confusion: a header naming a public-key algorithm must not make the
    # server verify with its HMAC secret.
    rejection(handmade_token({"alg": alg, "typ": "JWT"}, {"sub": "alice"}))


def test_missing_sub_is_the_anonymous_user() -> None:
    # Centrifugo v6 takes a correctly signed token without `sub` as the anonymous user.
    claims = verify_connection_token(token({"channels": ["news"]}), SECRET)
    assert claims.user == ""
    assert claims.channels == ("news",)


def test_subscription_token_without_sub_is_for_the_anonymous_user() -> None:
    assert verify_subscription_token(token({"channel": "c"}), SECRET).user == ""


def test_non_string_sub_is_rejected() -> None:
    rejection(handmade_token({"alg": "HS256", "typ": "JWT"}, {"sub": 42}))


@pytest.mark.parametrize("channels", ["news", [1, 2], {"news": True}, ["ok", None]])
def test_channels_claim_that_is_not_a_list_of_strings_is_rejected(channels: object) -> None:
    rejection(token({"sub": "alice", "channels": channels}))


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "e30.e30.e30"])
def test_malformed_token_is_rejected(garbage: str) -> None:
    assert rejection(garbage).expired is False


def test_subscription_token_without_channel_is_rejected() -> None:
    with pytest.raises(TokenError, match="channel"):
        verify_subscription_token(token({"sub": "alice"}), SECRET)


def test_subscription_token_signed_with_another_secret_is_rejected() -> None:
    forged = mint_subscription_token(OTHER_SECRET, "alice", "private:room")
    with pytest.raises(TokenError):
        verify_subscription_token(forged, SECRET)


# -- the fast path agrees with PyJWT ------------------------------------------------------
# verify_* take a fast path for the common token and ask PyJWT about everything else; the
# verdict must be PyJWT's for every token, including the ones built to slip through.

_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def signed(header: dict[str, Any], body: bytes, secret: str = SECRET) -> str:
    """A token with this header and raw payload bytes, signed with the header's HS* alg
    (SHA-256 for any other alg)."""
    hash_ = _HASHES.get(str(header.get("alg")), hashlib.sha256)
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(body)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hash_).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims_token(claims: dict[str, Any], alg: str = "HS256", **header: Any) -> str:
    return signed({"alg": alg, "typ": "JWT", **header}, json.dumps(claims).encode())


NOW = int(time.time())
GOOD = claims_token({"sub": "u"})
EDGE_TOKENS = {
    "plain": GOOD,
    "hs384": claims_token({"sub": "u", "exp": NOW + 60}, "HS384"),
    "hs512": claims_token({"sub": "u", "exp": NOW + 60}, "HS512"),
    "no typ": signed({"alg": "HS256"}, b'{"sub": "u"}'),
    "every time claim valid": claims_token({"sub": "u", "iat": NOW, "nbf": NOW, "exp": NOW + 9}),
    "float exp": claims_token({"sub": "u", "exp": NOW + 60.5}),
    "expired": claims_token({"sub": "u", "exp": NOW - 1}),
    "expired float": claims_token({"sub": "u", "exp": NOW - 0.5}),
    "exp as digits": claims_token({"sub": "u", "exp": str(NOW + 60)}),
    "exp as a word": claims_token({"sub": "u", "exp": "soon"}),
    "exp true": claims_token({"sub": "u", "exp": True}),
    "exp null": claims_token({"sub": "u", "exp": None}),
    "exp huge": claims_token({"sub": "u", "exp": 10**30}),
    "exp NaN": signed({"alg": "HS256"}, b'{"sub": "u", "exp": NaN}'),
    "exp Infinity": signed({"alg": "HS256"}, b'{"sub": "u", "exp": Infinity}'),
    "exp 1e400": signed({"alg": "HS256"}, b'{"sub": "u", "exp": 1e400}'),
    "nbf ahead": claims_token({"sub": "u", "nbf": NOW + 60}),
    "nbf as digits ahead": claims_token({"sub": "u", "nbf": str(NOW + 60)}),
    "iat ahead": claims_token({"sub": "u", "iat": NOW + 60}),
    "iat a list": claims_token({"sub": "u", "iat": [1]}),
    "sub a number": claims_token({"sub": 7}),
    "jti a number": claims_token({"sub": "u", "jti": 7}),
    "aud": claims_token({"sub": "u", "aud": "someone"}),
    "duplicate exp, last expired": signed(
        {"alg": "HS256"}, f'{{"sub": "u", "exp": {NOW + 60}, "exp": {NOW - 60}}}'.encode()
    ),
    "lone surrogate": signed({"alg": "HS256"}, b'{"sub": "\\ud800"}'),
    "byte order mark": signed({"alg": "HS256"}, b'\xef\xbb\xbf{"sub": "u"}'),
    "payload a list": signed({"alg": "HS256"}, b'["u"]'),
    "payload not json": signed({"alg": "HS256"}, b"sub=u"),
    "alg none": claims_token({"sub": "u"}, "none"),
    "alg lower case": claims_token({"sub": "u"}, "hs256"),
    "alg RS256": claims_token({"sub": "u"}, "RS256"),
    "alg missing": signed({"typ": "JWT"}, b'{"sub": "u"}'),
    "alg a list": signed({"alg": ["HS256"]}, b'{"sub": "u"}'),
    "kid": claims_token({"sub": "u"}, kid="k1"),
    "kid a number": claims_token({"sub": "u"}, kid=1),
    "crit b64": claims_token({"sub": "u"}, crit=["b64"], b64=False),
    "crit unknown": claims_token({"sub": "u"}, crit=["exp"]),
    "header a list": f"{b64url(b'[1]')}.{GOOD.split('.', 1)[1]}",
    "another secret": signed({"alg": "HS256"}, b'{"sub": "u"}', OTHER_SECRET),
    "signature cut": GOOD[:-2],
    "signature padded": GOOD + "=",
    "signature in standard base64": GOOD.replace("-", "+").replace("_", "/"),
    "signature missing": GOOD.rsplit(".", 1)[0] + ".",
    "two segments": GOOD.rsplit(".", 1)[0],
    "four segments": GOOD + ".x",
    "non-ascii": GOOD[:-1] + "é",
    "empty payload segment": f"{GOOD.split('.')[0]}..{GOOD.split('.')[2]}",
}


def pyjwt_verdict(tok: str) -> tuple[str, str, int | None] | str:
    """What PyJWT alone says of ``tok``, with the options Tether verifies with."""
    try:
        claims = jwt.decode(
            tok, SECRET, algorithms=["HS256", "HS384", "HS512"], options={"verify_aud": False}
        )
    except jwt.ExpiredSignatureError:
        return "expired"
    except jwt.PyJWTError:
        return "invalid"
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        return "invalid"
    exp = claims.get("exp")
    return ("ok", sub, int(exp) if exp is not None else None)


@pytest.mark.parametrize("case", sorted(EDGE_TOKENS))
def test_a_token_gets_pyjwts_verdict(case: str) -> None:
    tok = EDGE_TOKENS[case]
    expected = pyjwt_verdict(tok)
    verdict: tuple[str, str, int | None] | str
    try:
        claims = verify_connection_token(tok, SECRET)
    except TokenError as exc:
        verdict = "expired" if exc.expired else "invalid"
    else:
        verdict = ("ok", claims.user, claims.expire_at)
    assert verdict == expected


@pytest.mark.parametrize("case", sorted(EDGE_TOKENS))
def test_a_subscription_token_gets_pyjwts_verdict(case: str) -> None:
    tok = EDGE_TOKENS[case]
    expected = pyjwt_verdict(tok)
    try:
        verify_subscription_token(tok, SECRET)
    except TokenError as exc:
        # No channel claim in these tokens: an accepted one fails on that instead.
        verdict = (
            "expired" if exc.expired else ("no channel" if "channel" in str(exc) else "invalid")
        )
    else:
        verdict = "accepted without a channel"
    assert verdict == ("no channel" if isinstance(expected, tuple) else expected)


def test_a_rejected_token_says_what_pyjwt_says() -> None:
    with pytest.raises(TokenError, match="invalid token: Signature verification failed"):
        verify_connection_token(EDGE_TOKENS["another secret"], SECRET)


def test_a_short_secret_still_gets_pyjwts_key_length_warning() -> None:
    short = "short"
    tok = signed({"alg": "HS256"}, b'{"sub": "u"}', short)
    with pytest.warns(InsecureKeyLengthWarning):
        assert verify_connection_token(tok, short).user == "u"


def test_a_pem_key_as_secret_is_refused_as_pyjwt_refuses_it() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\n" + "A" * 64 + "\n-----END PUBLIC KEY-----"
    tok = signed({"alg": "HS256"}, b'{"sub": "u"}', pem)
    with pytest.raises(TokenError, match="invalid token"):
        verify_connection_token(tok, pem)
