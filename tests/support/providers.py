"""pytest plugin: a fake SendGrid + Twilio + FCM (and Google OAuth2 token endpoint) on
loopback, for the provider sinks' tests and end-to-end tests.

One aiohttp app answers the documented request shapes like the provider would: it checks
the credentials, the content type and the required fields, answers 400/401/404 in the
provider's own error shape, records every request it accepted, and can be told to answer
the next N requests of a provider with 429 (+ ``Retry-After``) or 5xx.

Fixture ``fake_providers`` (function scope): a started :class:`FakeProviders`:

* ``.url``: its root (``http://127.0.0.1:N``), the ``base_url`` of every provider sink;
* ``.sent("sendgrid" | "twilio" | "fcm")``: accepted request bodies, in order (JSON
  objects; Twilio's form as a dict);
* ``.fail_next(provider, status, n=1, retry_after=None)``: the next ``n`` requests to
  ``provider`` (also ``"token"``, the OAuth2 endpoint) get ``status`` in its error shape;
* ``.hits[provider]``: requests received (failed ones included);
* ``.unregistered``: FCM tokens answered 404 UNREGISTERED;
* ``.sink_config(provider, secrets_dir, **overrides)``: a sinks-file entry for that
  provider pointing at the fake, credentials in ``*_file`` keys written to
  ``secrets_dir`` (Twilio templates too, from ``twilio_templates``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["PROVIDERS", "FakeProviders", "VirtualTime", "fake_providers"]

PROVIDERS = ("sendgrid", "twilio", "fcm", "token")
SENDGRID_KEY = "SG.fake-sendgrid-key"
TWILIO_SID = "AC" + "a1" * 16
TWILIO_TOKEN = "fake-twilio-auth-token"
FCM_PROJECT = "nudge-test"
CLIENT_EMAIL = "nudge@nudge-test.iam.gserviceaccount.com"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


@functools.cache
def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers or {},
    )


def _sendgrid_error(status: int, message: str, field: str | None = None) -> web.Response:
    return _json(status, {"errors": [{"message": message, "field": field, "help": None}]})


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    return _json(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def _fcm_error(status: int, grpc: str, message: str, code: str | None = None) -> web.Response:
    err: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if code is not None:
        err["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]
    return _json(status, {"error": err})


class VirtualTime:
    """A clock and a sleep for a sink's bucket and ``deliver`` together: ``sleep`` records
    the delay and moves the clock on, so a Retry-After waited out by ``deliver`` is also
    over for the sink's token bucket. ``delays``: every sleep, in order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float, /) -> None:
        self.delays.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)


class FakeProviders:
    """The fake's state; see the module docstring."""

    sendgrid_key = SENDGRID_KEY
    twilio_sid = TWILIO_SID
    twilio_token = TWILIO_TOKEN
    fcm_project = FCM_PROJECT

    def __init__(self) -> None:
        self.url = ""
        self.hits: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self.unregistered: set[str] = set()
        self._sent: dict[str, list[dict[str, Any]]] = {p: [] for p in PROVIDERS}
        self._failures: dict[str, deque[tuple[int, float | None]]] = {p: deque() for p in PROVIDERS}
        self._tokens: set[str] = set()
        self._ids = itertools.count(1)

    # --- the test's side ---------------------------------------------------------------
    def sent(self, provider: str) -> list[dict[str, Any]]:
        """Accepted request bodies to ``provider``, in arrival order."""
        return list(self._sent[provider])

    def fail_next(
        self, provider: str, status: int, n: int = 1, retry_after: float | None = None
    ) -> None:
        """Answer the next ``n`` requests to ``provider`` with ``status`` (and
        ``Retry-After: retry_after`` when given), in the provider's error shape."""
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}")
        self._failures[provider].extend([(status, retry_after)] * n)

    def revoke_tokens(self) -> None:
        """Forget every access token issued (FCM then answers 401)."""
        self._tokens.clear()

    def service_account(self) -> dict[str, Any]:
        """A service account key file's JSON whose token_uri is this fake."""
        pem = _private_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "fake-key-1",
            "private_key": pem.decode(),
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }

    def sink_config(
        self,
        provider: str,
        secrets_dir: Path,
        twilio_templates: dict[str, str] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A sinks-file entry for ``provider`` aimed at this fake (fast pacing)."""
        secrets_dir.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any]
        if provider == "sendgrid":
            key = secrets_dir / "sendgrid_api_key"
            key.write_text(SENDGRID_KEY + "\n")
            cfg = {
                "type": "sendgrid",
                "api_key_file": str(key),
                "from": {"email": "shop@example.com", "name": "Example Shop"},
                "templates": {"cart_reminder": "d-cart123", "welcome": "d-welcome1"},
            }
        elif provider == "twilio":
            token = secrets_dir / "twilio_auth_token"
            token.write_text(TWILIO_TOKEN + "\n")
            tdir = secrets_dir / "sms"
            tdir.mkdir(exist_ok=True)
            templates = twilio_templates or {
                "cart_10pct": "Your cart misses you: $discount_pct% off with $code",
            }
            for name, text in templates.items():
                (tdir / f"{name}.txt").write_text(text + "\n")
            cfg = {
                "type": "twilio",
                "account_sid": TWILIO_SID,
                "auth_token_file": str(token),
                "from": "+15005550006",
                "templates_dir": str(tdir),
            }
        elif provider == "fcm":
            sa = secrets_dir / "fcm.json"
            sa.write_bytes(orjson.dumps(self.service_account()))
            cfg = {"type": "fcm", "service_account_file": str(sa)}
        else:
            raise ValueError(f"unknown provider {provider!r}")
        cfg.update(base_url=self.url, rate_per_second=1000, base_delay=0.0, max_delay=0.0)
        cfg.update(overrides)
        return cfg

    # --- the provider's side -----------------------------------------------------------
    def _failure(self, provider: str) -> web.Response | None:
        self.hits[provider] += 1
        queue = self._failures[provider]
        if not queue:
            return None
        status, retry_after = queue.popleft()
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if provider == "sendgrid":
            resp = _sendgrid_error(status, "too many requests" if status == 429 else "error")
            if status == 429:
                reset = int(time.time() + (retry_after or 1))
                headers.update(
                    {
                        "X-RateLimit-Limit": "600",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(reset),
                    }
                )
        elif provider == "twilio":
            code = {429: 20429, 400: 21211}.get(status, 20500)
            resp = _twilio_error(status, code, "Too Many Requests" if status == 429 else "Error")
        elif provider == "fcm":
            grpc, code = {
                429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
                503: ("UNAVAILABLE", "UNAVAILABLE"),
                400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            }.get(status, ("INTERNAL", "INTERNAL"))
            resp = _fcm_error(status, grpc, "injected failure", code)
        else:
            resp = _json(status, {"error": "temporarily_unavailable"})
        resp.headers.update(headers)
        return resp

    async def sendgrid(self, request: web.Request) -> web.StreamResponse:
        if (fail := self._failure("sendgrid")) is not None:
            return fail
        if request.headers.get("Authorization") != f"Bearer {SENDGRID_KEY}":
            return _sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked"
            )
        if request.content_type != "application/json":
            return _sendgrid_error(415, "Content-Type should be application/json.")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _sendgrid_error(400, "Bad Request")
        problem = _sendgrid_problem(body)
        if problem is not None:
            return _sendgrid_error(400, problem[1], problem[0])
        self._sent["sendgrid"].append(body)
        return web.Response(status=202, headers={"X-Message-Id": f"fake{next(self._ids)}"})

    async def twilio(self, request: web.Request) -> web.StreamResponse:
        if (fail := self._failure("twilio")) is not None:
            return fail
        if request.match_info["sid"] != TWILIO_SID:
            return _twilio_error(404, 20404, "The requested resource was not found")
        if request.headers.get("Authorization") != _basic(TWILIO_SID, TWILIO_TOKEN):
            return _twilio_error(401, 20003, "Authenticate")
        if request.content_type != "application/x-www-form-urlencoded":
            return _twilio_error(400, 20001, "Unsupported content type")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not form.get("To"):
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(form["To"]):
            return _twilio_error(400, 21211, f"Invalid 'To' Phone Number: {form['To']}")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return _twilio_error(400, 21602, "Message body is required.")
        if len(form["Body"]) > 1600:
            return _twilio_error(400, 21617, "The concatenated message body exceeds 1600")
        self._sent["twilio"].append(form)
        sid = f"SM{next(self._ids):032x}"
        return _json(
            201,
            {"sid": sid, "status": "queued", "to": form["To"], "body": form["Body"]},
        )

    async def token(self, request: web.Request) -> web.StreamResponse:
        if (fail := self._failure("token")) is not None:
            return fail
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json(400, {"error": "unsupported_grant_type"})
        problem = _jwt_problem(str(form.get("assertion", "")), f"{self.url}/token")
        if problem is not None:
            return _json(400, {"error": "invalid_grant", "error_description": problem})
        token = f"ya29.fake-{next(self._ids)}"
        self._tokens.add(token)
        self._sent["token"].append({"assertion": str(form["assertion"])})
        return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def fcm(self, request: web.Request) -> web.StreamResponse:
        if (fail := self._failure("fcm")) is not None:
            return fail
        if request.match_info["project"] != FCM_PROJECT:
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            return _fcm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            )
        if request.content_type != "application/json":
            return _fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return _fcm_error(400, "INVALID_ARGUMENT", "Missing message", "INVALID_ARGUMENT")
        token = message.get("token")
        if not isinstance(token, str) or not token:
            return _fcm_error(400, "INVALID_ARGUMENT", "Missing target", "INVALID_ARGUMENT")
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return _fcm_error(
                400, "INVALID_ARGUMENT", "Invalid value at 'message.data'", "INVALID_ARGUMENT"
            )
        if token in self.unregistered:
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        self._sent["fcm"].append(body)
        return _json(200, {"name": f"projects/{FCM_PROJECT}/messages/{next(self._ids)}"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v3/mail/send", self.sendgrid)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio)
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.fcm)
        return app


def _sendgrid_problem(body: Any) -> tuple[str | None, str] | None:
    """(field, message) of the first thing SendGrid would refuse, else None."""
    if not isinstance(body, dict):
        return None, "Bad Request"
    pers = body.get("personalizations")
    if not isinstance(pers, list) or not pers:
        return "personalizations", "The personalizations field is required."
    for i, p in enumerate(pers):
        to = p.get("to") if isinstance(p, dict) else None
        if not isinstance(to, list) or not to:
            return f"personalizations.{i}.to", "The to array is required."
        for r in to:
            if not (isinstance(r, dict) and "@" in str(r.get("email", ""))):
                return f"personalizations.{i}.to", "Does not contain a valid address."
        args = p.get("custom_args", {})
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            return f"personalizations.{i}.custom_args", "custom_args values must be strings"
    sender = body.get("from")
    if not (isinstance(sender, dict) and "@" in str(sender.get("email", ""))):
        return "from.email", "The from email does not contain a valid address."
    if not body.get("template_id") and not body.get("content"):
        return (
            "content",
            "Unless a valid template_id is provided, the content parameter is required.",
        )
    cats = body.get("categories", [])
    if not isinstance(cats, list) or len(cats) > 10:
        return "categories", "Too many categories; 10 is the maximum."
    if not all(isinstance(c, str) and 0 < len(c) <= 255 for c in cats):
        return "categories", "Categories must be strings of at most 255 characters."
    args = body.get("custom_args", {})
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        return "custom_args", "custom_args values must be strings"
    return None


def _jwt_problem(assertion: str, audience: str) -> str | None:
    parts = assertion.split(".")
    if len(parts) != 3:
        return "Invalid JWT"
    try:
        header = orjson.loads(_b64decode(parts[0]))
        claims = orjson.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, orjson.JSONDecodeError):
        return "Invalid JWT"
    if header.get("alg") != "RS256":
        return "Invalid JWT: alg"
    try:
        _private_key().public_key().verify(
            signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return "Invalid JWT Signature."
    if claims.get("iss") != CLIENT_EMAIL:
        return "Invalid issuer"
    if claims.get("aud") != audience:
        return "Invalid audience"
    if "https://www.googleapis.com/auth/firebase.messaging" not in str(claims.get("scope", "")):
        return "Invalid scope"
    iat, exp = claims.get("iat"), claims.get("exp")
    if not (isinstance(iat, int) and isinstance(exp, int) and 0 < exp - iat <= 3600):
        return "Invalid JWT: iat/exp"
    return None


@pytest.fixture
async def fake_providers() -> AsyncIterator[FakeProviders]:
    """A started fake SendGrid/Twilio/FCM on a free loopback port."""
    fake = FakeProviders()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()
