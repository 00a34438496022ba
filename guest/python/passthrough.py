"""Forwards every notification unchanged."""
from wit_world import exports
from wit_world.imports import types


class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        return types.Verdict_Forward()
