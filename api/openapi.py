"""The read API's OpenAPI 3.1 document, as committed in contracts/openapi.json.

Generated from the FastAPI app (`app.openapi()`), so the document and the routes cannot drift;
`ledgerflow contracts export --check` and a unit test fail when the committed file is stale.
"""

from __future__ import annotations

import json
from typing import Any

from ledgerflow.api.app import build_api
from ledgerflow.workers.auth import AuthMode
from ledgerflow.workers.settings import Settings

OPENAPI_FILE = "openapi.json"


def openapi_document() -> dict[str, Any]:
    # The document depends on no setting: authentication off only spares it a JWKS.
    return build_api(Settings(auth_mode=AuthMode.OFF)).openapi()


def render_openapi() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
