"""The gateway's /mcp with the official MCP Python SDK (mcp 2.x), in both protocol generations:
the stateless 2026-07-28 revision and the initialize handshake (mode="legacy"). Run by
tests/suite/mcp.rs; prints "all SDK checks passed" when every check holds.

Env: GATEWAY_URL, GATEWAY_KEY (every tool), LIMITED_KEY (allowlist add + gateway_*), MODEL.
"""

import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL = os.environ["GATEWAY_URL"].rstrip("/") + "/mcp"
KEY = os.environ["GATEWAY_KEY"]
LIMITED = os.environ["LIMITED_KEY"]
MODEL = os.environ["MODEL"]

failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def all_tools(c):
    tools, cursor = [], None
    while True:
        page = await c.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            return tools


def connect(key, mode):
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx2.Timeout(30.0, read=60.0),
    )
    return http, Client(streamable_http_client(URL, http_client=http), mode=mode)


async def session_checks(mode):
    http, client = connect(KEY, mode)
    async with http:
        async with client as c:
            label = f"[{mode}] "
            check(label + "negotiated version", (c.protocol_version == "2026-07-28") == (mode != "legacy"), c.protocol_version)
            names = [t.name for t in await all_tools(c)]
            for want in ["add", "echo", "sleep", "count", "fail", "gateway_chat", "gateway_list_models"]:
                check(label + f"tools/list has {want}", want in names, names)
            check(label + "no mcp_ prefix on /mcp", not any(n.startswith("mcp_") for n in names), names)
            r = await c.call_tool("add", {"a": 2, "b": 3})
            check(label + "add", text_of(r) == "5" and not r.is_error, r)
            seen = []

            async def progress(p, total, message):
                seen.append((p, total, message))

            r = await c.call_tool("count", {"n": 3}, progress_callback=progress)
            check(label + "count result", text_of(r) == "counted to 3", r)
            check(label + "progress passed through", [s[0] for s in seen] == [1.0, 2.0, 3.0] and seen[-1][1] == 3.0, seen)
            r = await c.call_tool("fail", {})
            check(label + "a failing tool is isError", r.is_error, r)
            r = await c.call_tool("gateway_list_models", {})
            check(label + "gateway_list_models", MODEL in text_of(r), r)
            r = await c.call_tool("gateway_chat", {"model": MODEL, "prompt": "say hi"})
            check(label + "gateway_chat answers", not r.is_error and len(text_of(r)) > 0, r)
            try:
                await c.call_tool("no_such_tool", {})
                check(label + "unknown tool is an error", False, "no error")
            except Exception as e:  # McpError
                check(label + "unknown tool is an error", "Unknown tool" in str(e), e)


async def allowlist_checks(mode):
    http, client = connect(LIMITED, mode)
    async with http:
        async with client as c:
            names = sorted(t.name for t in await all_tools(c))
            check(f"[{mode}] allowlist filters tools/list", names == ["add", "gateway_chat", "gateway_list_models"], names)
            try:
                await c.call_tool("echo", {"text": "x"})
                check(f"[{mode}] a tool outside the allowlist is refused", False, "no error")
            except Exception as e:
                check(f"[{mode}] a tool outside the allowlist is refused", "Unknown tool" in str(e), e)


async def no_key_checks():
    http, client = connect("not-a-key", "2026-07-28")
    try:
        async with http:
            async with client as c:
                await c.list_tools()
        check("a bad key is refused", False, "connected")
    except Exception as e:  # the SDK surfaces the 401 as an MCP error (the wire is checked in Rust)
        print("     (the SDK raised", type(e).__name__ + ")")
        check("a bad key is refused", True)


async def main():
    for mode in ["2026-07-28", "legacy"]:
        await session_checks(mode)
        await allowlist_checks(mode)
    await no_key_checks()
    if failures:
        print("FAILED:", failures)
        sys.exit(1)
    print("all SDK checks passed")


anyio.run(main)
