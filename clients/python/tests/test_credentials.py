"""Credential providers against a real service: an OIDC token file re-read
when the kubelet swaps it, and the function's AWS IAM identity checked by
moto's STS server (the service replays the signed request there)."""

import http.server
import json
import os
import subprocess
import threading
import time

import boto3
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from conftest import free_port
from middleway_client import AwsIam, Middleway, OidcTokenFile, StaticKey, Unauthorized
from middleway_client import credentials as credentials_module

AUDIENCE = "middleway-clients"


class Issuer:
    """An OIDC issuer on loopback: discovery and JWKS, one EC key."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys"}
                elif self.path == "/keys":
                    body = {"keys": [issuer.key.as_dict(private=False)]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, subject: str) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        return jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims, self.key)


@pytest.fixture
def sts():
    port = free_port()
    process = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            httpx.get(f"{url}moto-api/")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    process.kill()
    process.wait()


def role_session(sts_url: str, role: str) -> dict:
    client = boto3.client("sts", endpoint_url=sts_url, region_name="us-east-1",
                          aws_access_key_id="AKIASETUP0000000000", aws_secret_access_key="setup")
    answer = client.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{role}", RoleSessionName=role)
    return answer["Credentials"]


def use_session(monkeypatch, session: dict) -> None:
    """What Lambda's runtime does: the role session's credentials in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", session["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", session["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", session["SessionToken"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def service_with_identities(start_service, sts, tmp_path):
    issuer = Issuer()
    auth = tmp_path / "auth.toml"
    auth.write_text(f"""
[[principals]]
name = "ci"
oidc = {{ issuer = "{issuer.url}", subject = "ci" }}
scopes = ["transcriptions:read"]

[[principals]]
name = "locker"
oidc = {{ issuer = "{issuer.url}", subject = "locker" }}
scopes = ["locks:*"]

[[principals]]
name = "reports"
aws = {{ arn = "arn:aws:iam::123456789012:role/reports-fn" }}
scopes = ["transcriptions:read"]

[oidc."{issuer.url}"]
audience = "{AUDIENCE}"
""")
    service = start_service(AUTH_FILE=str(auth), AUTH_AWS_AUDIENCE=AUDIENCE, AUTH_AWS_STS_ENDPOINTS=sts)
    return service, issuer, sts


def swap_token(folder, token: str) -> None:
    """The kubelet's update of a projected token: a new data folder, then an
    atomic swap of the ``..data`` symlink the file name points through."""
    data = folder / f"..{time.monotonic_ns()}"
    data.mkdir()
    (data / "token").write_text(token)
    link = folder / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, folder / "..data")
    if not (folder / "token").exists():
        (folder / "token").symlink_to("..data/token")


def test_an_oidc_token_file_is_read_again_when_the_kubelet_rotates_it(service_with_identities, tmp_path):
    service, issuer, _ = service_with_identities
    folder = tmp_path / "tokens"
    folder.mkdir()
    swap_token(folder, issuer.token("ci"))
    with Middleway(service.url, OidcTokenFile(folder / "token")) as mw:
        assert mw.transcription(999_999_999) is None  # authenticated as ci (404, not 401 or 403)
        swap_token(folder, issuer.token("locker"))
        # Now the locker: its scopes cover locks, not reads.
        lock = mw.acquire("rotated-token", lease_ms=5000)
        mw.release("rotated-token", lock.token)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError):
        OidcTokenFile(tmp_path / "empty")


def test_a_function_authenticates_with_its_iam_role_and_renews_its_token(service_with_identities, monkeypatch):
    service, _, sts = service_with_identities
    use_session(monkeypatch, role_session(sts, "reports-fn"))
    other = role_session(sts, "not-configured")
    # From here on moto checks every signature.
    httpx.post(f"{sts}moto-api/reset-auth", content=b"0", headers={"content-type": "text/plain"})

    provider = AwsIam(AUDIENCE, sts_endpoint=sts)
    with Middleway(service.url, provider) as mw:
        assert mw.transcription(999_999_999) is None
        first = provider.bearer()
        assert first.startswith("mw-aws-v1.")
        assert provider.bearer() == first, "one token while it is young"

        # Ten minutes on, a new token is signed before the old one ages out
        # (a second later in real time, so its signing date differs).
        time.sleep(1.1)
        clock = time.monotonic()
        monkeypatch.setattr(credentials_module.time, "monotonic", lambda: clock + 601)
        renewed = provider.bearer()
        assert renewed != first
        assert mw.transcription(999_999_999) is None

        # The runtime's credentials change (a new role session): so does the token.
        use_session(monkeypatch, other)
        provider_for_other = AwsIam(AUDIENCE, sts_endpoint=sts)
        with Middleway(service.url, provider_for_other) as stranger:
            with pytest.raises(Unauthorized):
                stranger.transcription(1)
    assert repr(StaticKey("secret-key-0123456789")) == "StaticKey(<hidden>)"
