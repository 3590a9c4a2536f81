"""IAM tokens for the service's tests, made against a running moto STS server
the way a function makes them: AssumeRole gives a role session's credentials,
and the Python client's own token builder (clients/python) signs
GetCallerIdentity with them. Prints a JSON object of named tokens, then turns
on moto's signature checks (every later request must be signed right).

usage: iam_tokens.py STS_URL AUDIENCE OTHER_STS_URL
"""

import datetime
import importlib.util
import json
import pathlib
import sys
import urllib.request

import boto3
import botocore.auth
from botocore.credentials import Credentials

root = pathlib.Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location(
    "credentials", root / "clients/python/middleway_client/credentials.py")
credentials = importlib.util.module_from_spec(spec)
spec.loader.exec_module(credentials)

sts_url, audience, other_sts_url = sys.argv[1:4]
ACCOUNT = "123456789012"
REGION = "us-east-1"

def moto_auth(count: str) -> None:
    """moto checks signatures after `count` more requests ("inf": never)."""
    url = f"{sts_url.rstrip('/')}/moto-api/reset-auth"
    urllib.request.urlopen(urllib.request.Request(url, data=count.encode(), headers={"Content-Type": "text/plain"}))


moto_auth("inf")
sts = boto3.client("sts", endpoint_url=sts_url, region_name=REGION,
                   aws_access_key_id="AKIASETUP0000000000", aws_secret_access_key="setup")


def session(role: str) -> Credentials:
    answer = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName=f"{role}-session")
    c = answer["Credentials"]
    return Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])


def token(creds: Credentials, aud: str = audience, url: str = sts_url, minutes_ago: int = 0) -> str:
    if minutes_ago:
        at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda *a, **k: at
        try:
            return credentials.aws_iam_token(creds.get_frozen_credentials(), aud, REGION, url)
        finally:
            botocore.auth.get_current_datetime = original
    return credentials.aws_iam_token(creds.get_frozen_credentials(), aud, REGION, url)


reports = session("reports-fn")
stranger = session("not-configured")
forged = Credentials(reports.access_key, "wrong-secret-0000000000000000000000000000", reports.token)
tokens = {
    "reports": token(reports),
    "reports_again": token(reports, minutes_ago=1),
    "stranger": token(stranger),
    "other_audience": token(reports, aud="another-service"),
    "aged": token(reports, minutes_ago=16),
    "forged": token(forged),
    "other_endpoint": token(reports, url=other_sts_url),
}
# From here on moto checks every signature (GetCallerIdentity needs no policy).
moto_auth("0")
print(json.dumps(tokens))
