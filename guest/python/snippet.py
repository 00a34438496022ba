# app.py — build: componentize-py -d wit -w filter componentize --stub-wasi app -o acme.wasm
import json
from wit_world import exports
from wit_world.imports import types

MAX_DEPTH = 128   # json's C parser recurses: far deeper nesting would exhaust the guest's stack

class Handler(exports.Handler):
    def on_notify(self, n: types.Notification) -> types.Verdict:
        if too_deep(n.body):
            return types.Verdict_Reject(f"cannot read the body: nested deeper than {MAX_DEPTH}")
        try:
            v = json.loads(n.body)
        except (ValueError, RecursionError) as e:   # not JSON: refuse, never forward
            return types.Verdict_Reject(f"cannot read the body: {e}")
        if not isinstance(v, dict):
            return types.Verdict_Forward()
        if v.get("internal") is True:
            return types.Verdict_Drop()
        v["seen"] = True
        try:
            # Python keeps big integers and key order; allow_nan=False keeps the output JSON.
            return types.Verdict_Replace(json.dumps(v, allow_nan=False))
        except (ValueError, RecursionError) as e:
            return types.Verdict_Reject(f"cannot write the body: {e}")

def too_deep(text: str) -> bool:
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False
