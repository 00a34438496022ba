// Lets through only objects with an integer `id`, a non-empty string `kind`, and (if present) an
// object `data`; rejects the rest with a reason.
function check(body) {
  let v;
  try { v = JSON.parse(body); } catch (e) { return `not JSON: ${e}`; }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'body must be a JSON object';
  if (!('id' in v)) return 'missing required field `id`';
  if (!Number.isInteger(v.id)) return 'field `id` must be an integer';
  if (!('kind' in v)) return 'missing required field `kind`';
  if (typeof v.kind !== 'string' || v.kind === '') return 'field `kind` must be a non-empty string';
  if ('data' in v && (v.data === null || typeof v.data !== 'object' || Array.isArray(v.data))) {
    return 'field `data` must be an object';
  }
  return null;
}

export const handler = {
  onNotify(n) {
    const reason = check(n.body);
    return reason === null ? { tag: 'forward' } : { tag: 'reject', val: reason };
  },
};
