// Answers as Markdown, safely: marked (vendor/marked.umd.js) turns the text into HTML, DOMPurify
// (vendor/purify.min.js) keeps only what a Markdown answer needs and hands back DOM nodes — no string of HTML
// is ever assigned to the page. Raw HTML in an answer is shown as text, images as their alt text (an answer
// cannot make the browser fetch anything), links open in a new tab without a referrer. The edge's
// Content-Security-Policy (web/nginx.conf.j2) is the second wall: no inline script, no foreign connections.
//
// While an answer streams, only the blocks that changed are rendered again (normally the last one), at most
// once per animation frame: a long answer does not re-flow from the top on every chunk.
"use strict";

window.QsMarkdown = (function () {
  const ALLOWED_TAGS = [
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "code",
    "em", "strong", "del", "a", "table", "thead", "tbody", "tr", "th", "td",
  ];
  const ALLOWED_ATTR = ["href", "title", "align", "start", "class"];
  const SAFE_URL = /^(?:https?:|mailto:)/i;
  const CODE_CLASS = /^language-[A-Za-z0-9_+#-]{1,32}$/;

  function escapeHtml(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  const md = new marked.Marked({
    gfm: true,
    async: false,
    renderer: {
      html({ text }) { return escapeHtml(text); },
      image({ text }) { return escapeHtml(text); },
    },
  });

  // Only a code block's language class survives (a class of the page's own, e.g. "error", could dress an
  // answer up as the page's UI); links get a new tab and no referrer.
  DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
    if (data.attrName === "class" && !(node.nodeName === "CODE" && CODE_CLASS.test(data.attrValue))) {
      data.keepAttr = false;
    }
  });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });

  function sanitize(html) {
    return DOMPurify.sanitize(html, {
      ALLOWED_TAGS, ALLOWED_ATTR, ALLOWED_URI_REGEXP: SAFE_URL, RETURN_DOM_FRAGMENT: true,
      // Values that are not addresses: spared the URL check (which only lets http(s) and mailto through).
      ADD_URI_SAFE_ATTR: ["align", "start"],
    });
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Copy failed: select the code";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  }

  // Each fenced (or indented) block gets a copy button above it.
  function addCopyButtons(root) {
    for (const pre of root.querySelectorAll("pre")) {
      const box = document.createElement("div");
      box.className = "code";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      button.addEventListener("click", () => copy(pre.textContent, button));
      pre.replaceWith(box);
      box.append(button, pre);
    }
  }

  function renderBlock(token, links) {
    const list = [token];
    list.links = links;
    const block = document.createElement("div");
    block.className = "md-block";
    block.append(sanitize(md.parser(list)));
    addCopyButtons(block);
    return block;
  }

  // A view renders a growing text into `container`: set(text) schedules, flush() renders now.
  function createView(container) {
    let text = "";
    let shown = []; // the Markdown source of each rendered block, one child of `container` per block
    let frame = 0;

    function render() {
      if (frame) cancelAnimationFrame(frame);
      frame = 0;
      const tokens = md.lexer(text);
      const blocks = tokens.filter((t) => t.type !== "space");
      const sources = blocks.map((t) => t.raw.trimEnd());
      let same = 0;
      while (same < shown.length && same < sources.length && shown[same] === sources[same]) same++;
      while (container.children.length > same) container.lastElementChild.remove();
      for (let i = same; i < blocks.length; i++) container.append(renderBlock(blocks[i], tokens.links));
      shown = sources;
    }

    return {
      set(value) {
        text = value;
        if (!frame) frame = requestAnimationFrame(render);
      },
      flush() {
        render();
      },
      get text() { return text; },
    };
  }

  return { createView };
})();
