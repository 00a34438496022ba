// Strips secrets (password, secret, token, keys starting with `_`) at any depth, renames the top-level
// `usr` to `user`, and stamps the tenant. Non-object bodies pass unchanged.
const isSecret = (k) => k === 'password' || k === 'secret' || k === 'token' || k.startsWith('_');

function strip(v) {
  if (Array.isArray(v)) return v.map(strip);
  if (v !== null && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) if (!isSecret(k)) out[k] = strip(x);
    return out;
  }
  return v;
}

export const handler = {
  onNotify(n) {
    let v;
    try { v = JSON.parse(n.body); } catch { return { tag: 'reject', val: 'body is not JSON' }; }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return { tag: 'forward' };
    const out = {};
    for (const [k, x] of Object.entries(strip(v))) out[k === 'usr' ? 'user' : k] = x;
    out.tenant = n.tenant;
    return { tag: 'replace', val: JSON.stringify(out) };
  },
};
