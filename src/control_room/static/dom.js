// Small DOM helpers shared by the dashboard's views. Text always goes in as text (never as
// HTML), so nothing a session or an agent says can become markup.

/** `el('a', {class, text, href, 'data-x': ...}, ...children)`: one element, built whole. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** A link that opens outside the page (Jules, GitHub), without giving them this tab. */
export function externalLink(href, text, label) {
  const link = el('a', { href, text, target: '_blank', rel: 'noopener noreferrer' });
  if (label) link.title = label;
  return link;
}

/** The fragment that opens a session's detail: links to it work in a new tab too. */
export function sessionHref(sessionId) {
  return `#session=${encodeURIComponent(sessionId)}`;
}

/** Set a node's text only when it differs (no needless layout or screen-reader chatter). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
