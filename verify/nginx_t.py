"""Reading what Nginx really runs: the output of `nginx -T` (every included file, as Nginx parsed it).

`problems(text, expected)` lists every way the effective settings of the streamed API location differ from
the stack's (verify/expect.py): a directive missing means its default, and proxy_buffering's default is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from verify.expect import Edge

# Nginx's defaults for what the checks read (http://nginx.org/en/docs/http/ngx_http_proxy_module.html).
DEFAULTS = {
    "proxy_buffering": "on",
    "proxy_cache": "off",
    "proxy_request_buffering": "on",
    "proxy_http_version": "1.0",
    "proxy_read_timeout": "60s",
    "proxy_send_timeout": "60s",
    "client_max_body_size": "1m",
}


@dataclass
class Block:
    name: str
    args: list[str]
    directives: list[tuple[str, list[str]]] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)
    parent: Block | None = None

    def effective(self, directive: str) -> str | None:
        """The value in force here: this block's own, else the nearest enclosing block's (Nginx inheritance)."""
        block: Block | None = self
        while block is not None:
            values = [" ".join(args) for name, args in block.directives if name == directive]
            if values:
                return values[-1]
            block = block.parent
        return None

    def walk(self) -> list[Block]:
        found = [self]
        for child in self.children:
            found += child.walk()
        return found


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};"\']+')


def parse(text: str) -> Block:
    """The configuration tree of `nginx -T` output (comments, including the file headers, dropped)."""
    root = Block("main", [])
    current = root
    words: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for token in _TOKEN.findall(line):
            if token == "{":
                child = Block(words[0] if words else "", words[1:], parent=current)
                current.children.append(child)
                current, words = child, []
            elif token == "}":
                if current.parent is None:
                    raise ValueError("unbalanced '}' in nginx -T output")
                current, words = current.parent, []
            elif token == ";":
                if words:
                    current.directives.append((words[0], [w.strip("\"'") for w in words[1:]]))
                words = []
            else:
                words.append(token)
    return root


def locations(root: Block, path: str) -> list[Block]:
    return [b for b in root.walk() if b.name == "location" and b.args == [path]]


def problems(text: str, expected: Edge) -> list[str]:
    """Each way the running config differs from the stack's expectations; [] when it matches."""
    root = parse(text)
    found = locations(root, expected.location)
    if not found:
        return [f"no `location {expected.location}` in nginx -T (the streamed API is not proxied here)"]
    wrong = []
    for block in found:
        for directive, want in {**expected.directives, "client_max_body_size": expected.client_max_body_size}.items():
            have = block.effective(directive) or DEFAULTS.get(directive)
            if have != want:
                wrong.append(f"location {expected.location}: {directive} is {have!r} (effective), expected {want!r}")
    return wrong
