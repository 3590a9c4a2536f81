"""Who the client says it is: a static API key, an OIDC token read from a file
(Kubernetes projected service-account tokens, rotated by the kubelet), or the
function's own AWS IAM identity (no secret at all).

Each provider's ``bearer()`` gives the ``Authorization: Bearer`` value for the
next request; providers are cheap to call per request (a file is read again
only when it changed, an IAM token is signed again only before it ages out).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any, Optional, Protocol, Tuple, Union


class CredentialProvider(Protocol):
    def bearer(self) -> str:
        """The credential for the next request."""
        ...


class StaticKey:
    """An API key (``API_KEYS``, or a principal's ``api_keys``)."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("an API key is required")
        self._key = key

    def bearer(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return "StaticKey(<hidden>)"


class OidcTokenFile:
    """A JWT kept in a file by the platform: a Kubernetes projected
    service-account token (``/var/run/secrets/tokens/middleway``), a CI job's
    OIDC token. Read again whenever the file changes (the kubelet rotates
    projected tokens in place, by a symlink swap)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        self._seen: Optional[Tuple[int, int, int]] = None
        self._token = ""
        self.bearer()  # a missing or empty file is an error now, not at the first call

    def bearer(self) -> str:
        stat = os.stat(self._path)
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if seen != self._seen:
                with open(self._path, encoding="utf-8") as file:
                    token = file.read().strip()
                if not token:
                    raise ValueError(f"{self._path} holds no token")
                self._token, self._seen = token, seen
            return self._token

    def __repr__(self) -> str:
        return f"OidcTokenFile({self._path!r})"


#: What every IAM bearer starts with.
AWS_TOKEN_PREFIX = "mw-aws-v1."
#: The one request an IAM token may carry.
GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"
#: The service accepts a token for 15 minutes after signing; a new one is
#: signed after this many seconds, well before.
AWS_TOKEN_RENEW_AFTER_S = 10 * 60


def aws_iam_token(credentials: Any, audience: str, region: str, sts_endpoint: str) -> str:
    """A ``mw-aws-v1.`` token: an STS ``GetCallerIdentity`` request signed
    (SigV4) with botocore ``credentials``, covering ``x-middleway-audience``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(
        method="POST",
        url=sts_endpoint,
        data=GET_CALLER_IDENTITY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "x-middleway-audience": audience,
        },
    )
    SigV4Auth(credentials, "sts", region).add_auth(request)
    signed = {
        "method": "POST",
        "url": sts_endpoint,
        "headers": dict(request.headers.items()),
        "body": GET_CALLER_IDENTITY,
    }
    encoded = base64.urlsafe_b64encode(json.dumps(signed).encode()).rstrip(b"=").decode()
    return AWS_TOKEN_PREFIX + encoded


class AwsIam:
    """The function's IAM role, proven to middleway without a secret: the
    runtime's own credentials (botocore's chain: Lambda's environment, ECS or
    EKS roles, profiles) sign an STS ``GetCallerIdentity`` request that
    middleway replays. ``audience`` is the service's ``AUTH_AWS_AUDIENCE``.

    Needs botocore (in every Lambda Python runtime; ``pip install
    middleway-client[aws]`` elsewhere)."""

    def __init__(self, audience: str, region: Optional[str] = None, sts_endpoint: Optional[str] = None,
                 session: Any = None) -> None:
        try:
            import botocore.session
        except ImportError as error:
            raise ImportError("AwsIam needs botocore (pip install 'middleway-client[aws]')") from error

        if not audience:
            raise ValueError("the service's AUTH_AWS_AUDIENCE is required")
        self._audience = audience
        self._session = session or botocore.session.get_session()
        self._region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
            or self._session.get_config_variable("region") or "us-east-1"
        self._endpoint = sts_endpoint or f"https://sts.{self._region}.amazonaws.com/"
        self._lock = threading.Lock()
        self._token = ""
        self._signed_at = 0.0
        self._access_key = ""

    def bearer(self) -> str:
        with self._lock:
            credentials = self._session.get_credentials()
            if credentials is None:
                raise RuntimeError("no AWS credentials found (botocore's credential chain is empty)")
            frozen = credentials.get_frozen_credentials()
            now = time.monotonic()
            # A new token when the old one nears its end, or when the runtime's
            # credentials were renewed (the old session may be gone).
            if (not self._token or now - self._signed_at > AWS_TOKEN_RENEW_AFTER_S
                    or frozen.access_key != self._access_key):
                self._token = aws_iam_token(frozen, self._audience, self._region, self._endpoint)
                self._signed_at, self._access_key = now, frozen.access_key
            return self._token

    def __repr__(self) -> str:
        return f"AwsIam(audience={self._audience!r}, endpoint={self._endpoint!r})"


def provider(key: Union[str, CredentialProvider]) -> CredentialProvider:
    """A string is a static API key; anything else must have ``bearer()``."""
    if isinstance(key, str):
        return StaticKey(key)
    if not callable(getattr(key, "bearer", None)):
        raise TypeError("key must be an API key string or a credential provider with bearer()")
    return key
