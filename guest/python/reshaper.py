"""Strips secrets (password, secret, token, keys starting with `_`) at any depth, renames the
top-level `usr` to `user`, and stamps the tenant. Non-object bodies pass unchanged."""
import json

from wit_world import exports
from wit_world.imports import types


def is_secret(k: str) -> bool:
    return k in ("password", "secret", "token") or k.startswith("_")


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if not is_secret(k)}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        try:
            v = json.loads(n.body)
        except ValueError:
            return types.Verdict_Reject("body is not JSON")
        if not isinstance(v, dict):
            return types.Verdict_Forward()
        out = {("user" if k == "usr" else k): x for k, x in strip(v).items()}
        out["tenant"] = n.tenant
        return types.Verdict_Replace(json.dumps(out, separators=(",", ":"), ensure_ascii=False))
