"""Lets through only objects with an integer `id`, a non-empty string `kind`, and (if present) an
object `data`; rejects the rest with a reason."""
import json
from typing import Optional

from wit_world import exports
from wit_world.imports import types


def check(body: str) -> Optional[str]:
    try:
        v = json.loads(body)
    except ValueError as e:
        return f"not JSON: {e}"
    if not isinstance(v, dict):
        return "body must be a JSON object"
    if "id" not in v:
        return "missing required field `id`"
    if not isinstance(v["id"], int) or isinstance(v["id"], bool):
        return "field `id` must be an integer"
    if "kind" not in v:
        return "missing required field `kind`"
    if not isinstance(v["kind"], str) or v["kind"] == "":
        return "field `kind` must be a non-empty string"
    if "data" in v and not isinstance(v["data"], dict):
        return "field `data` must be an object"
    return None


class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        reason = check(n.body)
        return types.Verdict_Forward() if reason is None else types.Verdict_Reject(reason)
