"""What every answer of the viewer must be, as a schemathesis check (tests/viewer/test_viewer_fuzz.py).

``schemathesis run`` loads this module through ``SCHEMATHESIS_HOOKS``. Each response is also written
to the file named by ``LLMRI_FUZZ_LOG`` (one JSON line: operation, status), so the test can see that
every route was reached, answered and refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis


def error_problem(status: int, headers: dict[str, list[str]], content: bytes) -> str:
    """Why a response is not what the viewer promises ("" if it is): no 5xx, the security headers on
    every answer, and every error one JSON object ``{"error": "one line"}`` (the 409 of
    ``/api/compare`` also says ``"comparable": false``)."""
    if status >= 500:
        return f"a server error ({status})"
    if headers.get("x-content-type-options") != ["nosniff"]:
        return "no X-Content-Type-Options: nosniff"
    if status < 400:
        return ""
    ctype = (headers.get("content-type") or [""])[0]
    if not ctype.startswith("application/json"):
        return f"an error answered as {ctype or 'no content type'}"
    try:
        body = json.loads(content)
    except ValueError:
        return "an error whose body is not JSON"
    if not isinstance(body, dict) or not set(body) <= {"error", "comparable"}:
        return f"an error that is not {{'error': line}}: {content[:200]!r}"
    line = body.get("error")
    if not isinstance(line, str) or not line.strip() or "\n" in line or "\r" in line:
        return f"an error message that is not one line: {line!r:.200}"
    return ""


@schemathesis.check
def viewer_answer_shape(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx; security headers everywhere; every error the viewer's one-line JSON error."""
    log = os.environ.get("LLMRI_FUZZ_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"operation": case.operation.label, "status": response.status_code}) + "\n")
    headers = {k.lower(): list(v) for k, v in response.headers.items()}
    problem = error_problem(response.status_code, headers, response.content)
    if problem:
        raise AssertionError(f"{problem} (status {response.status_code}, body {response.content[:300]!r})")
