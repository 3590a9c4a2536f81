/**
 * JSON.parse, except that integers beyond 2^53 come back exactly, as
 * `bigint` (ids of large tables; JSON.parse would round them). Node 20 has
 * no access to a number's source text in a reviver, so such literals are
 * found by a scan that skips strings, and quoted with a marker first: a
 * lone surrogate, which no string the service sends (UTF-8) can hold.
 */
const MARK = '\ud800';
/** The marker as JSON text. */
const MARK_JSON = '\\ud800';

export function parseJson(text: string): unknown {
  let marked = '';
  let last = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      // Skip the string, escapes included.
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      continue;
    }
    if (c === '-' || (c >= '0' && c <= '9')) {
      let end = i + 1;
      while (end < text.length && /[0-9eE.+-]/.test(text[end])) end++;
      const literal = text.slice(i, end);
      if (/^-?\d{16,}$/.test(literal) && !Number.isSafeInteger(Number(literal))) {
        marked += `${text.slice(last, i)}"${MARK_JSON}${literal}"`;
        last = end;
      }
      i = end - 1;
    }
  }
  if (last === 0) return JSON.parse(text);
  marked += text.slice(last);
  return JSON.parse(marked, (_key, value) =>
    typeof value === 'string' && value.startsWith(MARK) ? BigInt(value.slice(MARK.length)) : value,
  );
}
