// Routes each message to the topic named by its `kind`; high priority also goes to `alerts` as a
// summary. No `kind`: dropped.
export const handler = {
  onNotify(n) {
    let v;
    try { v = JSON.parse(n.body); } catch { return { tag: 'reject', val: 'body is not JSON' }; }
    const kind = v && typeof v === 'object' ? v.kind : undefined;
    if (typeof kind !== 'string') return { tag: 'drop' };
    const routes = [{ topic: kind, body: undefined }];
    if (v.priority === 'high') {
      routes.push({ topic: 'alerts', body: JSON.stringify({ alert: kind, id: v.id ?? null }) });
    }
    return { tag: 'route', val: routes };
  },
};
