"""Push notifications through Firebase Cloud Messaging's HTTP v1 API.

One ``POST {base_url}/v1/projects/{project_id}/messages:send`` per action, authorised by
an OAuth2 access token of a service account, JSON, accepted on 200::

    {"message": {"token": action.to,
                 "notification": {"title": ..., "body": ...},
                 "data": {<params as strings>, "nudge_customer": ..., "nudge_key": ...,
                          "nudge_rule": ..., "nudge_template": ...}}}

``title`` and ``body`` come from ``notifications[action.template]`` (``$name`` params
filled in as for Twilio), else from the params ``title`` and ``body``; with neither the
send is a non-retryable error naming the template. FCM data values must be strings:
string params are kept, numbers and booleans written as in JSON, anything else as JSON.
The ``nudge_*`` keys (the same as SendGrid's ``custom_args``) let the app report opens.

The access token: a JWT (RS256, signed with the service account's private key, ``iss`` its
``client_email``, ``scope`` firebase.messaging, ``aud`` the token URI, one hour) exchanged
at the service account's ``token_uri`` (``token_uri`` in the sinks config overrides it),
cached until a minute before it expires, fetched again after a 401.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Annotated, Any, ClassVar, Literal, Unpack

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.exceptions import ConnectorError, SinkError
from connectors.sinks.provider import (
    EpochSeconds,
    HttpReply,
    ProviderConfig,
    ProviderSink,
    Transport,
    as_data_string,
    fill_template,
)
from engine.types import Action

__all__ = ["FCM_SCOPE", "FCM_URL", "FcmConfig", "FcmSink", "ServiceAccount", "sign_jwt"]

logger = logging.getLogger(__name__)

FCM_URL = "https://fcm.googleapis.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_TOKEN_LIFETIME = 3600
_REFRESH_MARGIN = 60.0
_Text = Annotated[str, Field(min_length=1, max_length=1000)]


class _Notification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: _Text
    body: _Text


class FcmConfig(ProviderConfig):
    """``type: fcm``. Default pace 500 requests/s: FCM allows 600,000 messages a minute
    per project (10,000/s); 500/s leaves room for the project's other senders."""

    SECRETS: ClassVar[tuple[str, ...]] = ("service_account",)
    DEFAULT_RATE: ClassVar[float] = 500.0

    type: Literal["fcm"]
    service_account_env: str | None = None
    service_account_file: str | None = None
    project_id: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        None, description="default: the service account's project_id"
    )
    token_uri: Annotated[str, Field(pattern=r"^https?://[^/\s]+")] | None = Field(
        None, description="default: the service account's token_uri"
    )
    notifications: dict[Annotated[str, Field(min_length=1, max_length=100)], _Notification] = {}


class ServiceAccount:
    """The parts of a Google service account key file the sink uses. The private key is
    never printed."""

    def __init__(
        self,
        client_email: str,
        private_key: rsa.RSAPrivateKey,
        private_key_id: str,
        token_uri: str,
        project_id: str | None,
    ) -> None:
        self.client_email = client_email
        self.private_key = private_key
        self.private_key_id = private_key_id
        self.token_uri = token_uri
        self.project_id = project_id

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r})"

    @classmethod
    def from_json(cls, text: str | SecretStr) -> ServiceAccount:
        """Parse a key file's JSON; ConnectorError (no key material in it) if unusable."""
        raw = text.get_secret_value() if isinstance(text, SecretStr) else text
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ConnectorError("service account: not JSON") from None
        if not isinstance(doc, dict):
            raise ConnectorError("service account: expected a JSON object")
        missing = [k for k in ("client_email", "private_key") if not isinstance(doc.get(k), str)]
        if missing:
            raise ConnectorError(f"service account: missing {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(doc["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ConnectorError("service account: private_key is not a PEM key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConnectorError("service account: private_key is not an RSA key")
        project = doc.get("project_id")
        return cls(
            doc["client_email"],
            key,
            str(doc.get("private_key_id") or ""),
            str(doc.get("token_uri") or GOOGLE_TOKEN_URI),
            project if isinstance(project, str) and project else None,
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_jwt(account: ServiceAccount, audience: str, now: float, scope: str = FCM_SCOPE) -> str:
    """The signed assertion exchanged for an access token (RFC 7523, RS256)."""
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    iat = int(now)
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": audience,
        "iat": iat,
        "exp": iat + _TOKEN_LIFETIME,
    }
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = account.private_key.sign(
        signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{_b64(signature)}"


class FcmSink(ProviderSink):
    """One messages:send request per action; see the module docstring for the body.

    ``send`` raises a non-retryable SinkError when the action has no address (token), no
    title/body can be made, FCM refuses (400 INVALID_ARGUMENT, 403 SENDER_ID_MISMATCH,
    404 UNREGISTERED: the app was uninstalled or the token expired) or the token endpoint
    refuses the service account (4xx); a retryable one on 5xx, 401 (the cached token is
    dropped), timeouts and connection errors; :class:`SinkBackpressure` on 429/503 with
    ``Retry-After``.
    """

    provider: ClassVar[str] = "fcm"
    default_rate: ClassVar[float] = FcmConfig.DEFAULT_RATE

    def __init__(
        self,
        account: ServiceAccount,
        *,
        project_id: str | None = None,
        token_uri: str | None = None,
        notifications: dict[str, tuple[str, str]] | None = None,
        base_url: str = FCM_URL,
        wall: EpochSeconds = time.time,
        name: str = "fcm",
        **transport: Unpack[Transport],
    ) -> None:
        super().__init__(name, base_url, **transport)
        project = project_id or account.project_id
        if not project:
            raise ConnectorError(
                "no project_id (and none in the service account)", field="project_id"
            )
        self.account = account
        self.project_id = project
        self.token_uri = token_uri or account.token_uri
        self.notifications = dict(notifications or {})
        self.url = f"{self.base_url}/v1/projects/{project}/messages:send"
        self._wall = wall
        self._token: SecretStr | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0

    @classmethod
    def from_config(cls, name: str, cfg: FcmConfig, secrets: dict[str, SecretStr]) -> FcmSink:
        key = "service_account_env" if cfg.service_account_env else "service_account_file"
        try:
            account = ServiceAccount.from_json(secrets["service_account"])
        except ConnectorError as err:
            raise ConnectorError(err.message, field=key) from None
        return cls(
            account,
            project_id=cfg.project_id,
            token_uri=cfg.token_uri,
            notifications={k: (v.title, v.body) for k, v in cfg.notifications.items()},
            base_url=cfg.base_url or FCM_URL,
            name=name,
            **cfg.transport(),
        )

    def body(self, action: Action) -> dict[str, Any]:
        """The messages:send JSON for ``action`` (raises SinkError as ``send`` does)."""
        token = self.require_address(action)
        params = action.params
        what = f"fcm template {action.template!r}"
        mapped = self.notifications.get(action.template)
        if mapped is not None:
            title = fill_template(mapped[0], params, what)
            text = fill_template(mapped[1], params, what)
        elif isinstance(params.get("title"), str) and isinstance(params.get("body"), str):
            title, text = params["title"], params["body"]
        else:
            raise SinkError(
                f"{what}: no notification for it in the sinks file and no title/body params",
                retryable=False,
            )
        data = {str(k): as_data_string(v) for k, v in params.items() if v is not None}
        data.update(
            nudge_customer=action.customer_id,
            nudge_key=action.idempotency_key,
            nudge_rule=action.rule_id,
            nudge_template=action.template,
        )
        return {
            "message": {
                "token": token,
                "notification": {"title": title, "body": text},
                "data": data,
            }
        }

    async def _access_token(self) -> str:
        async with self._token_lock:
            if self._token is not None and self._wall() < self._token_expires:
                return self._token.get_secret_value()
            now = self._wall()
            form = {
                "grant_type": _JWT_GRANT,
                "assertion": sign_jwt(self.account, self.token_uri, now),
            }
            reply = await self._request(self.token_uri, headers={}, data=form, paced=False)
            self.token_fetches += 1
            doc = reply.json()
            if not 200 <= reply.status < 300:
                detail = ""
                if isinstance(doc, dict):
                    detail = str(doc.get("error_description") or doc.get("error") or "")
                raise self._fail(reply, f"token endpoint: {detail}".rstrip(": "))
            token = doc.get("access_token") if isinstance(doc, dict) else None
            if not isinstance(token, str) or not token:
                raise SinkError("fcm: token endpoint answered without access_token", retryable=True)
            expires_in = doc.get("expires_in", _TOKEN_LIFETIME)
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 0.0
            self._token = SecretStr(token)
            self._token_expires = now + max(0.0, lifetime - _REFRESH_MARGIN)
            return token

    async def send(self, action: Action) -> None:
        """One messages:send request (and a token request when the cached one expired);
        see the class docstring for the outcomes."""
        try:
            data = orjson.dumps(self.body(action), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as err:
            raise SinkError(f"fcm: params cannot be encoded: {err}", retryable=False) from err
        token = await self._access_token()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        reply = await self._request(self.url, headers=headers, data=data)
        if 200 <= reply.status < 300:
            return
        code, detail = _detail(reply)
        if reply.status == 401:
            self._token = None  # revoked or expired early: fetch a new one next time
            raise SinkError(f"fcm HTTP 401: {detail}", retryable=True, status=401)
        if code == "UNREGISTERED":
            raise SinkError(
                f"fcm: token unregistered: {detail}", retryable=False, status=reply.status
            )
        raise self._fail(reply, detail)


def _detail(reply: HttpReply) -> tuple[str | None, str]:
    """FCM's ``{"error": {"code", "message", "status", "details": [{"errorCode"}]}}`` as
    (FCM error code, one line)."""
    doc = reply.json()
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, reply.body[:200].decode("utf-8", "replace").strip()
    code: str | None = None
    for d in err.get("details") or []:
        if isinstance(d, dict) and isinstance(d.get("errorCode"), str):
            code = d["errorCode"]
    status = err.get("status")
    label = code or (status if isinstance(status, str) else None)
    message = str(err.get("message", ""))
    return code, f"{label}: {message}" if label else message
