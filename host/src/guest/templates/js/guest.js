// {{name}}: a pgws guest. It forwards every notification unchanged; change onNotify to decide what
// each message becomes.
export const handler = {
  // n.tenant, n.topic (undefined without one), n.channel, and n.body (JSON text, exactly as sent).
  // Besides {tag: 'forward'}: {tag: 'drop'}, {tag: 'replace', val: json},
  // {tag: 'route', val: [{topic, body}]}, {tag: 'reject', val: reason}.
  onNotify(n) {
    return { tag: 'forward' };
  },
};
