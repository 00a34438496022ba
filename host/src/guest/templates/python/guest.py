"""{{name}}: a pgws guest. It forwards every notification unchanged; change on_notify to decide what
each message becomes."""
from wit_world import exports
from wit_world.imports import types


class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        # n.tenant, n.topic (None without one), n.channel, and n.body (JSON text, exactly as sent).
        # Besides Verdict_Forward(): Verdict_Drop(), Verdict_Replace(json),
        # Verdict_Route([types.Route(topic, body)]), Verdict_Reject(reason).
        return types.Verdict_Forward()
