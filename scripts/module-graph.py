#!/usr/bin/env python3
"""The proxy's module graph, and the check that keeps its shape (run by scripts/test.sh).

Reads every `crate::<module>` reference in proxy/src (test code left out) and checks that
modules use only modules of lower layers, that leaves never use each other, and that
every module has a layer. `--print` shows the graph by layer; `--dot` prints Graphviz.

    python3 scripts/module-graph.py           # check; exit 1 on a forbidden edge
    python3 scripts/module-graph.py --print   # the graph, layer by layer
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proxy", "src")

# Lowest first. A module may use any module of a lower layer; within a layer, only the
# edges listed in SAME_LAYER. Leaves never use each other: what two leaves share is a
# type in `ir` (or a module below).
LAYERS = [
    ("vocabulary", ["ir", "body", "settings", "tls", "upstream", "redis", "error", "log_output"]),
    ("wire formats", ["sse", "formats"]),
    ("leaves", ["intake", "client_api", "auth", "routing", "cache", "quota", "plan",
                "health", "providers", "metrics", "access_log", "telemetry"]),
    ("config", ["runtime", "gateway"]),
    ("orchestrators", ["finish", "pipeline"]),
    ("process", ["server", "admin", "sync"]),
]
SAME_LAYER = {
    ("error", "ir"),          # errors name the client API whose format they take
    ("formats", "sse"),       # a wire format reads server-sent events
    ("gateway", "runtime"),   # the gateway holds the runtime it serves from
    ("pipeline", "finish"),   # the request path ends with the request's end
}
# The crate root (lib.rs, main.rs) starts everything and may use anything.
ROOTS = {"lib", "main"}


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def drop_tests(text):
    """Removes `#[cfg(test)] mod x { ... }` blocks (and `#[cfg(test)] mod x;`)."""
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*(;|\{)")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        i = m.end()
        if m.group(3) == "{":
            depth = 1
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1


def uses(text):
    """Every top-level module named by `crate::...` in `text`, with its line."""
    found = []
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    for m in re.finditer(r"use\s+crate::(\{.*?\}|[^;{]*(\{.*?\})?[^;]*);", text, flags=re.S):
        body = m.group(1).strip()
        if body.startswith("{"):
            depth, item, items = 0, "", []
            for ch in body[1:-1]:
                depth += {"{": 1, "}": -1}.get(ch, 0)
                if ch == "," and depth == 0:
                    items.append(item)
                    item = ""
                else:
                    item += ch
            items.append(item)
            names = [re.match(r"\s*(\w+)", it).group(1) for it in items if it.strip()]
        else:
            names = [re.match(r"(\w+)", body).group(1)]
        found += [(name, line_of(m.start())) for name in names]
    for m in re.finditer(r"(?<!use )(?<![\w:])crate::(\w+)", text):
        found.append((m.group(1), line_of(m.start())))
    return found


def graph():
    edges = defaultdict(dict)  # module -> {used module: "file:line"}
    modules = set()
    for directory, _, files in os.walk(ROOT):
        for name in sorted(files):
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, ROOT)
            parts = rel.split(os.sep)
            module = parts[0][:-3] if len(parts) == 1 else parts[0]
            modules.add(module)
            text = drop_tests(strip_comments(open(path, encoding="utf-8").read()))
            for used, line in uses(text):
                if used not in ("self", module):
                    edges[module].setdefault(used, f"proxy/src/{rel}:{line}")
    return modules, edges


def main():
    modules, edges = graph()
    layer_of = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
    # Items of the crate root (`crate::Settings`) count as their own modules' uses.
    root_items = {"install_crypto_provider": "tls", "Settings": "settings", "Proxy": "lib",
                  "start": "lib"}
    problems = []
    for module in sorted(modules - ROOTS):
        if module not in layer_of:
            problems.append(f"{module}: not in a layer; add it to LAYERS in {sys.argv[0]}")
    for module in sorted(modules - ROOTS):
        for used, where in sorted(edges[module].items()):
            used = root_items.get(used, used)
            if used not in layer_of or module not in layer_of:
                if used in ROOTS:
                    problems.append(f"{where}: {module} uses the crate root")
                continue
            a, b = layer_of[module], layer_of[used]
            if b < a or (module, used) in SAME_LAYER:
                continue
            kind = "a leaf uses another leaf" if a == b == 2 else (
                "uses a module of its own layer" if a == b else "uses a module of a higher layer")
            problems.append(f"{where}: {module} -> {used}: {kind} "
                            f"({LAYERS[a][0]} -> {LAYERS[b][0]})")

    if "--print" in sys.argv:
        for name, members in reversed(LAYERS):
            print(f"{name}:")
            for m in members:
                deps = sorted(root_items.get(u, u) for u in edges.get(m, {}))
                print(f"  {m:12} -> {', '.join(deps) if deps else '(nothing)'}")
    if "--dot" in sys.argv:
        print("digraph proxy {")
        for m in sorted(edges):
            for u in sorted(edges[m]):
                print(f'  "{m}" -> "{root_items.get(u, u)}";')
        print("}")
    if problems:
        print("module graph: the proxy's layering is broken:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print("Leaves share types through `ir`; orchestration belongs in `pipeline` or `finish`."
              " See docs/architecture.md.", file=sys.stderr)
        return 1
    if "--print" not in sys.argv and "--dot" not in sys.argv:
        count = sum(len(v) for v in edges.values())
        print(f"module graph: {len(modules - ROOTS)} modules, {count} edges, layering holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
