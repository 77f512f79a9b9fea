"""Where credentials come from: the job's secret scope (``dbutils.secrets``), else an environment variable.

Values are returned to the code that needs them and never logged, stored as MLflow params or sent as telemetry.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

logger = logging.getLogger(__name__)


class Credentials:
    def __init__(self, secrets: Any, scope: str):
        self._secrets = secrets
        self._scope = scope

    def get(self, key: str, env: Optional[str] = None) -> Optional[str]:
        """The secret ``key`` of the scope if it exists, else ``$env``, else None."""
        if self._secrets is not None and self._scope:
            try:
                value = self._secrets.get(self._scope, key)
                if value:
                    return value
            except Exception:  # a missing secret (or scope) means: not configured this way
                logger.debug("no secret %s in scope %s", key, self._scope)
        return os.environ.get(env) if env else None
