"""middleway-client: transcriptions and distributed locks from functions, through middleway."""

from ._model import Batch, Lock
from .aio import AsyncMiddleway
from .client import Middleway
from .credentials import AwsIam, CredentialProvider, OidcTokenFile, StaticKey
from .errors import (
    DeadlineExceeded,
    InvalidRequest,
    LockLost,
    LockTimeout,
    MiddlewayError,
    NotHeld,
    PermitsMismatch,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "AwsIam",
    "CredentialProvider",
    "OidcTokenFile",
    "StaticKey",
    "AsyncMiddleway", "Batch", "DeadlineExceeded", "InvalidRequest", "Lock", "LockLost", "LockTimeout", "Middleway",
    "MiddlewayError", "NotHeld", "PermitsMismatch", "Unauthorized", "Unavailable",
]
