"""Bearer API keys, compared in constant time against every configured key; keys are never logged."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="An API key from CROSSRANK_API_KEYS or --api-keys-file.")


def key_matches(candidate: str, keys: frozenset[str]) -> bool:
    """True if the candidate equals any key; every key is compared so timing does not reveal which one."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


async def require_api_key(request: Request,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
    """FastAPI dependency (declared in OpenAPI as the bearer scheme): pass when no keys are configured or the
    Bearer token matches one."""
    keys: frozenset[str] = request.app.state.config.api_keys
    if not keys:
        return
    if credentials is None or not key_matches(credentials.credentials, keys):
        raise HTTPException(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                            headers={"WWW-Authenticate": "Bearer"})
