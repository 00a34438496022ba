"""Routes each message to the topic named by its `kind`; high priority also goes to `alerts` as a
summary. No `kind`: dropped."""
import json

from wit_world import exports
from wit_world.imports import types


class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        try:
            v = json.loads(n.body)
        except ValueError:
            return types.Verdict_Reject("body is not JSON")
        kind = v.get("kind") if isinstance(v, dict) else None
        if not isinstance(kind, str):
            return types.Verdict_Drop()
        routes = [types.Route(topic=kind, body=None)]
        if v.get("priority") == "high":
            summary = json.dumps({"alert": kind, "id": v.get("id")}, separators=(",", ":"))
            routes.append(types.Route(topic="alerts", body=summary))
        return types.Verdict_Route(routes)
