#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/.

Real material first: upgrade requests as browsers, curl and tungstenite send
them, masked client frames as a browser sends them, the configuration files
the README and examples/ show, close payloads with every class of code. Then
the broken variants each parser must refuse. Deterministic: running it again
rewrites the same files (it removes nothing, so delete a seed here and by
hand). Each corpus stays under 40 files of at most 64 KiB, and most seeds
are small: libFuzzer's default -max_len is the largest seed (at least 4096),
and long inputs slow every execution.

Usage: python3 fuzz/make_corpus.py   (from anywhere)
"""

import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
MASKS = [b"\x37\xfa\x21\x3d", b"\x00\x00\x00\x00", b"\xa5\x5a\xff\x01"]


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    assert len(data) <= 64 * 1024, (target, name, len(data))
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def head(*lines, end="\r\n"):
    return (end.join(lines) + end + end).encode()


# --- request_head ----------------------------------------------------------

def request_heads():
    t = "request_head"
    write(t, "chromium_upgrade.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example:8080",
        "Connection: Upgrade",
        "Pragma: no-cache",
        "Cache-Control: no-cache",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Upgrade: websocket",
        "Origin: https://app.example",
        "Sec-WebSocket-Version: 13",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-US,en;q=0.9",
        "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"))
    write(t, "firefox_upgrade_subprotocols.http", head(
        "GET /api/v1/stream?token=s3cret HTTP/1.1",
        "Host: A.EXAMPLE",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Accept: */*",
        "Accept-Language: en-US,en;q=0.5",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Sec-WebSocket-Version: 13",
        "Origin: http://localhost:8080",
        "Sec-WebSocket-Protocol: chat, echo",
        "Sec-WebSocket-Extensions: permessage-deflate",
        "Sec-WebSocket-Key: 1TmzRZ+bT2ZcRTpqWTbKCg==",
        "Connection: keep-alive, Upgrade",
        "Cookie: theme=dark; token=s3cret",
        "Sec-Fetch-Dest: empty",
        "Sec-Fetch-Mode: websocket",
        "Sec-Fetch-Site: same-origin",
        "Pragma: no-cache",
        "Cache-Control: no-cache",
        "Upgrade: websocket"))
    write(t, "curl_upgrade.http", head(
        "GET /echo HTTP/1.1",
        "Host: 127.0.0.1:7681",
        "User-Agent: curl/8.5.0",
        "Accept: */*",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: WpyaYbS0HXg7bFmwkJwmYA==",
        "Connection: Upgrade"))
    write(t, "tungstenite_upgrade.http", head(
        "GET /chat HTTP/1.1",
        "Host: localhost:7681",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "rfc6455_example.http", head(
        "GET /chat HTTP/1.1",
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Origin: http://example.com",
        "Sec-WebSocket-Protocol: chat, superchat",
        "Sec-WebSocket-Version: 13"))
    write(t, "ipv6_host_bearer.http", head(
        "GET /api/ HTTP/1.1",
        "Host: [::1]:7681",
        "Upgrade: WebSocket",
        "Connection: upgrade",
        "Authorization: Bearer s3cret",
        "Sec-WebSocket-Protocol: chat",
        "Sec-WebSocket-Protocol: echo",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "origin_not_allowed.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Origin: https://evil.example",
        "Authorization: Bearer wrong",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "origin_latin1.http", b"GET /echo HTTP/1.1\r\nHost: a.example\r\n"
          b"Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://\xe9vil.example\r\n"
          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY.encode() + b"\r\n\r\n")
    write(t, "pipelined_frame.http", head(
        "GET / HTTP/1.1",
        "Host: other.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}") + masked(0x1, b"early", MASKS[0]))
    write(t, "plain_healthz.http", head(
        "GET /healthz HTTP/1.1", "Host: a.example", "Accept: */*"))
    write(t, "head_index_http10.http", head("HEAD / HTTP/1.0", "Connection: keep-alive"))
    write(t, "post_upgrade.http", head(
        "POST /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Content-Length: 0",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "http10_upgrade.http", head(
        "GET /echo HTTP/1.0",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "version_8.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 8",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "missing_key_no_host.http", head(
        "GET /echo HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13"))
    write(t, "key_short_and_bad_protocol.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: chat, bad proto, ",
        "Sec-WebSocket-Key: c2hvcnQ="))
    write(t, "key_not_base64.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: !!!!not-base64!!!!!!!!=="))
    write(t, "upgrade_without_connection.http", head(
        "GET /chat HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: keep-alive",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}"))
    write(t, "lf_only.http", head(
        "GET /echo HTTP/1.1",
        "Host: a.example",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {KEY}", end="\n") + b"\r\n\r\n")
    write(t, "absolute_form.http", head(
        "GET http://a.example/echo HTTP/1.1", "Host: a.example"))
    write(t, "http2_version.http", head("GET / HTTP/2.0", "Host: a.example"))
    write(t, "obs_fold.http", head(
        "GET / HTTP/1.1", "Host: a.example", "X-Folded: one", " two"))
    write(t, "nul_in_path.http", b"GET /ec\x00ho HTTP/1.1\r\nHost: a\r\n\r\n")
    write(t, "body_chunked.http", head(
        "GET /healthz HTTP/1.1", "Host: a.example", "Transfer-Encoding: chunked",
        "Content-Length: 5", "Host: b.example") + b"5\r\nhello\r\n0\r\n\r\n")
    write(t, "partial_head.http", b"GET /echo HTTP/1.1\r\nHost: a.example\r\nUpgrade: webs")
    write(t, "blank_line_only.http", b"\r\n\r\n")
    write(t, "garbage.bin", bytes((i * 37 + 11) % 256 for i in range(200)) + b"\r\n\r\n")
    many = ["GET / HTTP/1.1", "Host: a.example"] + [f"X-H{i}: {i}" for i in range(70)]
    write(t, "too_many_headers.http", head(*many))
    write(t, "at_header_limit.http", head(*many[:64]))
    write(t, "oversize_head.http", head(
        "GET / HTTP/1.1", "Host: a.example", "Cookie: " + "a" * 9000))
    write(t, "oversize_no_blank_line.http", b"GET / HTTP/1.1\r\nX: " + b"b" * 8300)
    write(t, "cookie_query_params.http", head(
        "GET /chat?x&token=&token=s3cret&y=%20 HTTP/1.1",
        "Host: a.example:",
        "Cookie: ;;token;token=s3cret;=x",
        "Authorization: Basic czNjcmV0",
        "Upgrade: websocket, h2c",
        "Connection: Upgrade, close",
        "Sec-WebSocket-Version:  13 ",
        f"Sec-WebSocket-Key:  {KEY} "))


# --- session_bytes ---------------------------------------------------------

def masked(opcode, payload, mask, fin=True, rsv=0, length=None):
    """A client frame; `length` overrides the announced length encoding."""
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    if length == "64":
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    elif length is not None:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", length)
    elif n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 65536:
        hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return struct.pack(">H", code) + reason


def session_bytes():
    t = "session_bytes"
    m0, m1, m2 = MASKS
    bye = masked(0x8, close(1000), m0)
    write(t, "text_then_close.ws", masked(0x1, b"Hello, world", m0) + bye)
    write(t, "binary_then_close.ws",
          masked(0x2, bytes(range(256)) * 4, m1) + masked(0x8, close(1001, b"bye"), m2))
    write(t, "fragmented_text_with_pings.ws",
          masked(0x1, b"Hello, ", m0, fin=False)
          + masked(0x9, b"ping 1", m1)
          + masked(0x0, b"fragmented ", m2, fin=False)
          + masked(0x9, b"", m0)
          + masked(0x0, b"world", m1)
          + bye)
    write(t, "fragmented_binary_with_pong.ws",
          masked(0x2, b"\x00\x01", m2, fin=False)
          + masked(0xA, b"unsolicited", m0)
          + masked(0x0, b"\x02\x03", m1, fin=False)
          + masked(0x0, b"", m0)
          + bye)
    kosme = "κόσμε".encode()
    write(t, "utf8_split_across_fragments.ws",
          masked(0x1, kosme[:3], m0, fin=False) + masked(0x0, kosme[3:], m1) + bye)
    # Autobahn 6.4.1: the second fragment turns invalid mid-message.
    write(t, "invalid_utf8_mid_fragment.ws",
          masked(0x1, kosme, m0, fin=False)
          + masked(0x0, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80", m1,
                   fin=False)
          + masked(0x0, b"edited", m2)
          + bye)
    write(t, "invalid_utf8_text.ws", masked(0x1, b"\xed\xa0\x80", m0) + bye)
    write(t, "close_with_reason.ws", masked(0x8, close(1000, "normal ✓".encode()), m1))
    write(t, "close_code_1005.ws", masked(0x8, close(1005), m0))
    write(t, "close_code_999_then_text.ws",
          masked(0x8, close(999), m0) + masked(0x1, b"after close", m1))
    write(t, "close_one_byte.ws", masked(0x8, b"\x03", m0))
    write(t, "close_bad_utf8_reason.ws", masked(0x8, close(1000, b"\xff\xfe"), m2))
    write(t, "close_4000_twice.ws",
          masked(0x8, close(4000, b"app"), m0) + masked(0x8, close(4999), m1))
    write(t, "huge_length_announced.ws",
          masked(0x2, b"just a little", m0, length=1 << 62))
    write(t, "length_top_bit_set.ws", masked(0x2, b"x", m0, length=1 << 63))
    write(t, "length_16MiB_announced.ws",
          masked(0x1, b"partial", m1, length=16 << 20) + b"partial data" * 10)
    write(t, "non_minimal_64bit_length.ws", masked(0x1, b"hello", m0, length="64") + bye)
    write(t, "unmasked_client_frame.ws", b"\x81\x05hello" + bye)
    write(t, "rsv1_without_extension.ws", masked(0x1, b"deflated?", m0, rsv=4) + bye)
    write(t, "reserved_opcode_3.ws", masked(0x3, b"", m0) + bye)
    write(t, "reserved_opcode_b.ws", masked(0xB, b"ctl", m1) + bye)
    write(t, "ping_126_bytes.ws", masked(0x9, b"p" * 126, m0) + bye)
    write(t, "fragmented_ping.ws", masked(0x9, b"frag", m0, fin=False) + bye)
    write(t, "continuation_without_start.ws", masked(0x0, b"orphan", m1) + bye)
    write(t, "new_message_inside_fragmented.ws",
          masked(0x1, b"first", m0, fin=False) + masked(0x2, b"second", m1) + bye)
    write(t, "ping_flood.ws",
          b"".join(masked(0x9, str(i).encode(), MASKS[i % 3]) for i in range(100)) + bye)
    write(t, "many_small_messages.ws",
          b"".join(masked(1 + i % 2, bytes([65 + i % 26]) * (i % 40), MASKS[i % 3])
                   for i in range(200)))
    write(t, "empty_messages.ws",
          masked(0x1, b"", m0) + masked(0x2, b"", m1) + masked(0x8, b"", m2))
    write(t, "text_16bit_length.ws", masked(0x1, b"0123456789" * 200, m2) + bye)
    blob = bytes(i % 251 for i in range(3000))
    write(t, "binary_3000_in_three_fragments.ws",
          masked(0x2, blob[:1000], m0, fin=False) + masked(0x0, blob[1000:2000], m1, fin=False)
          + masked(0x0, blob[2000:], m2) + bye)
    write(t, "no_close_eof.ws", masked(0x1, b"the peer vanishes", m1))
    write(t, "truncated_header.ws", b"\x81")
    write(t, "empty.ws", b"")
    write(t, "http_instead_of_frames.ws", head("GET / HTTP/1.1", "Host: a.example"))


# --- config ----------------------------------------------------------------

def readme_config():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start = text.index("```toml\n# context-wide") + len("```toml\n")
    return text[start:text.index("```", start)]


def configs():
    t = "config"
    write(t, "readme_full.toml", readme_config())
    for name in ("wsgate.toml", "autobahn.toml"):
        with open(os.path.join(REPO, "examples", name), "rb") as f:
            write(t, "examples_" + name, f.read())
    with open(os.path.join(REPO, "src", "config", "default.toml"), "rb") as f:
        write(t, "builtin_default.toml", f.read())
    write(t, "two_vhosts_shared_port.toml", """max_connections = 100
pumps = 2
drain_timeout = "250ms"

[[vhost]]
name = "a"
listen = ["127.0.0.1:0", "[::1]:0"]
hosts = ["a.example", "::1"]
origins = ["https://a.example/"]

[vhost.limits]
max_head_bytes = 1024
max_headers = 8
max_frame_size = 65536
max_message_size = "64KiB"
overflow = "close-1013"
ping_interval = "500ms"
idle_timeout = "2s"

[[vhost.mount]]
path = "/api"
protocols = ["echo"]
prefix = true

[[vhost]]
name = "b"
listen = ["127.0.0.1:0"]

[vhost.options.echo]
token = "s3cret"
retries = 3
verbose = true

[[vhost.mount]]
path = "/"
protocol = "echo"
""")
    write(t, "crlf_inline_tables.toml",
          'drain_timeout = "5m"\r\nvhost = [{ name = "x", listen = ["0.0.0.0:80"], '
          'mount = [{ path = "/", http = "health" }], limits = { close_timeout = "1h" } }]\r\n')
    base = '[[vhost]]\nname = "v"\nlisten = ["127.0.0.1:0"]\n'
    echo = '\n[[vhost.mount]]\npath = "/echo"\nprotocol = "echo"\n'
    write(t, "unknown_key.toml", base + "colour = \"blue\"\n" + echo)
    write(t, "bad_duration.toml", base + '\n[vhost.limits]\nidle_timeout = "10 parsecs"\n' + echo)
    write(t, "bad_size_unit.toml", base + '\n[vhost.limits]\nmax_message_size = "1XiB"\n' + echo)
    write(t, "size_overflow.toml",
          base + '\n[vhost.limits]\nmax_frame_size = "99999999999999999999GiB"\n' + echo)
    write(t, "negative_number.toml", "max_connections = -1\n" + base + echo)
    write(t, "zero_limits.toml",
          "pumps = 0\n" + base + "\n[vhost.limits]\nmax_sessions = 0\nmax_headers = 2000\n" + echo)
    write(t, "idle_not_above_ping.toml",
          base + '\n[vhost.limits]\nping_interval = "60s"\nidle_timeout = "60s"\n' + echo)
    write(t, "bad_overflow.toml", base + '\n[vhost.limits]\noverflow = "close-1000"\n' + echo)
    write(t, "unknown_protocol.toml", base + '\n[[vhost.mount]]\npath = "/x"\nprotocol = "chat"\n')
    write(t, "mount_two_targets.toml",
          base + '\n[[vhost.mount]]\npath = "/x"\nprotocol = "echo"\nhttp = "health"\n')
    write(t, "mount_no_target.toml", base + '\n[[vhost.mount]]\npath = "/x"\n')
    write(t, "empty_protocols.toml", base + '\n[[vhost.mount]]\npath = "/x"\nprotocols = []\n')
    write(t, "mount_path_relative.toml",
          base + '\n[[vhost.mount]]\npath = "echo"\nprotocol = "echo"\n')
    write(t, "mounted_twice.toml", base + echo + echo)
    write(t, "options_unused.toml", base + '\n[vhost.options.chat]\nk = "v"\n' + echo)
    write(t, "option_value_table.toml", base + '\n[vhost.options.echo]\nk = { a = 1 }\n' + echo)
    write(t, "bad_listen.toml", '[[vhost]]\nname = "v"\nlisten = ["localhost:80"]\n' + echo)
    write(t, "no_listen_empty_name.toml", '[[vhost]]\nname = ""\nlisten = []\n' + echo)
    write(t, "no_vhost.toml", "max_connections = 10\n")
    write(t, "empty.toml", "")
    write(t, "unterminated_string.toml", 'drain_timeout = "10s\n' + base)
    write(t, "duplicate_key.toml", "pumps = 1\npumps = 2\n" + base + echo)
    write(t, "vhost_not_array.toml", '[vhost]\nname = "v"\n')
    write(t, "error_on_last_line_no_newline.toml", base + echo + "prefix = maybe")
    write(t, "not_utf8.toml", b"[[vhost]]\nname = \"\xff\xfe\"\n")


# --- close_frame -----------------------------------------------------------

def close_frames():
    t = "close_frame"
    w = lambda name, data: write(t, name, data)
    w("empty", b"")
    w("one_byte", b"\x03")
    w("1000", close(1000))
    w("1000_bye", close(1000, b"bye"))
    w("1001_going_away", close(1001, b"going away"))
    w("1002_protocol_error", close(1002, b"protocol error"))
    w("1003", close(1003))
    w("1007_invalid_utf8", close(1007, b"invalid utf-8 in text message"))
    w("1008_policy", close(1008, b"policy violation"))
    w("1009_too_big", close(1009, b"message too big"))
    w("1010_extension", close(1010, b"permessage-deflate"))
    w("1011_internal", close(1011, b"internal error"))
    w("1012_restart", close(1012))
    w("1013_again", close(1013, b"try again later"))
    w("1014", close(1014))
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        w(f"invalid_{code}", close(code))
    w("3000_iana", close(3000, b"unauthorized"))
    w("4999_app", close(4999, b"app"))
    w("reason_123_bytes", close(1000, b"r" * 123))
    w("reason_124_bytes", close(1000, b"r" * 124))
    w("reason_multibyte", close(1001, "до свидания 👋".encode()))
    w("reason_truncated_utf8", close(1000, "é".encode() * 3 + "é".encode()[:1]))
    w("reason_overlong_nul", close(1000, b"\xc0\x80"))
    w("reason_surrogate", close(1000, b"\xed\xa0\x80"))
    w("reason_nul", close(1000, b"a\x00b"))


# --- compressed_session ------------------------------------------------------
# Byte 0: bit 0 dedicated, 1 server_no_context_takeover, 2
# client_no_context_takeover, 3 server_max_window_bits, 4
# client_max_window_bits, 5 with a value; byte 1: the windows (8 + b % 8, 8 +
# (b >> 3) % 8); byte 2: vhost window 9 + b % 7, level (b >> 4) % 10; byte 3:
# threshold; bytes 4-5: max_message_size - 1 (LE). Then messages: flags (bit 0
# text, 1 compressed, 2 garbage marked compressed, 3-5 fragments - 1, 6 pings
# between fragments, 7 RSV1 on continuations), length (LE u16), bytes.


def compressed_sessions():
    t = "compressed_session"
    json = b'{"type":"chat","user":"ada","text":"hello, hello, hello"}'

    def session(b0, windows, vhost, threshold, limit, *messages):
        out = bytes([b0, windows, vhost, threshold]) + struct.pack("<H", limit - 1)
        for flags, body in messages:
            out += bytes([flags]) + struct.pack("<H", len(body)) + body
        return out

    w = lambda name, data: write(t, name, data)
    w("browser_shared", session(0b10000, 0, 6 | 0x60, 0, 4096, (3, json), (3, json), (1, b"short")))
    w("browser_dedicated", session(0b10001, 0, 6 | 0x60, 0, 4096, (3, json), (3, json), (2 | 8 * 3, json)))
    w("dedicated_window_10", session(0b110001, 2 << 3, 1 | 0x10, 16, 4096, (3, json * 4), (3, json * 4)))
    w("server_window_8", session(0b01001, 0, 6 | 0x60, 0, 65535, (3, json * 2), (3, b"a" * 300), (3, json * 8)))
    w("no_takeover_both", session(0b00111, 0, 6, 0, 4096, (3, json), (3 | 0x40 | 8 * 2, json)))
    w("fragmented_with_pings", session(0b10001, 0, 6, 0, 4096, (3 | 0x40 | 8 * 7, json * 3)))
    w("bomb", session(0b10000, 0, 6, 0, 1024, (2, b"\0" * 4000)))
    w("garbage_marked_compressed", session(0b10001, 0, 6, 0, 4096, (7, b"\xff\xff\xff\xff")))
    w("rsv1_on_continuation", session(0b10000, 0, 6, 0, 4096, (3 | 0x80 | 8, json)))
    w("bad_utf8_compressed", session(0b10000, 0, 6, 0, 4096, (3, b"\xff\xfe" * 40)))
    w("empty_compressed", session(0b10000, 0, 6, 0, 4096, (3, b""), (2, b"")))


if __name__ == "__main__":
    request_heads()
    session_bytes()
    configs()
    close_frames()
    compressed_sessions()
    for target in sorted(os.listdir(os.path.join(ROOT, "corpus"))):
        files = os.listdir(os.path.join(ROOT, "corpus", target))
        assert len(files) <= 40, (target, len(files))
        print(f"{target}: {len(files)} files")
