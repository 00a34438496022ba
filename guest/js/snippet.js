// guest.js — build: npx componentize-qjs --wit wit --world filter --js guest.js -o acme.wasm --sync --stub-wasi
export const handler = {
  onNotify(n) {            // n: { tenant, topic, channel, body }
    try {
      return decide(JSON.parse(n.body), n.body);
    } catch (e) {          // not JSON, or nested deeper than the engine's stack: refuse, never forward
      return { tag: 'reject', val: `cannot read the body: ${e}` };
    }
  },
};

function decide(v, text) {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return { tag: 'forward' };
  if (v.internal === true) return { tag: 'drop' };
  // JSON.parse turns integers past 2^53 into nearby doubles: writing them back would change them.
  if (hasBigIntegers(text)) return { tag: 'reject', val: 'an integer too big to keep exactly' };
  return { tag: 'replace', val: JSON.stringify({ ...v, seen: true }) };
}

// Whether the JSON text holds an integer literal past 2^53 (outside strings).
function hasBigIntegers(text) {
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      let j = i;
      while (j < text.length && '-+0123456789.eE'.includes(text[j])) j++;
      const literal = text.slice(i, j);
      if (/^-?\d+$/.test(literal) && !Number.isSafeInteger(Number(literal))) return true;
      i = j - 1;
    }
  }
  return false;
}
