"""A throwaway OIDC issuer for bench/auth.sh: writes a discovery document and a
JWKS (one ES256 key) under DIR for `python3 -m http.server`, and prints a
token for SUBJECT valid for an hour.

usage: auth_issuer.py DIR ISSUER_URL AUDIENCE SUBJECT
"""

import json
import pathlib
import sys
import time

from joserfc import jwt
from joserfc.jwk import ECKey

folder, issuer, audience, subject = sys.argv[1:5]
root = pathlib.Path(folder)
(root / ".well-known").mkdir(parents=True, exist_ok=True)
key = ECKey.generate_key("P-256", parameters={"kid": "bench-1"})
(root / ".well-known/openid-configuration").write_text(json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/keys"}))
(root / "keys").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
now = int(time.time())
claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 3600}
print(jwt.encode({"alg": "ES256", "kid": "bench-1"}, claims, key))
