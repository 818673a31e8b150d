"""Drive headless Chromium over the DevTools protocol, with the standard library only.

Tests use it to check a generated page in a real browser: console errors and uncaught exceptions,
DOM state (e.g. a video's ``readyState``, an image's ``naturalWidth``) and a full-page screenshot.
A minimal RFC 6455 WebSocket client (text frames, client masking, ping/pong) is enough for CDP,
so no websocket package is needed.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
    "--mute-audio", "--hide-scrollbars", "--metrics-recording-only", "--password-store=basic",
]
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CDPError(RuntimeError):
    pass


def find_chromium() -> Optional[str]:
    """``$VOSBATCH_CHROMIUM``, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("VOSBATCH_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(install: bool = True, timeout: float = 900) -> Tuple[Optional[str], str]:
    """(path, "") when Chromium is there or could be installed (Debian ``apt-get``, as root);
    else (None, why) so a test can skip with the reason."""
    path = find_chromium()
    if path or not install:
        return path, "" if path else "chromium not found on PATH"
    if not shutil.which("apt-get"):
        return None, "chromium not found and apt-get is not available to install it"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "chromium not found and installing it needs root (apt-get install chromium)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                return None, f"`{' '.join(cmd)}` failed ({proc.returncode}): {' | '.join(tail)}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"installing chromium failed: {e}"
    path = find_chromium()
    return (path, "") if path else (None, "apt-get install chromium succeeded but no chromium binary on PATH")


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text messages, masked client frames."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self._buf = bytearray()
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{url}: connection closed during the WebSocket handshake")
            self._buf += chunk
        end = self._buf.index(b"\r\n\r\n")
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if " 101 " not in head.split("\r\n")[0] or accept not in head:
            raise ConnectionError(f"{url}: WebSocket handshake refused: {head.splitlines()[0]}")

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        # XOR with the repeated 4-byte key, done on big integers rather than byte by byte
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._frame(0x1, text.encode())

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("WebSocket closed by the browser")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._frame(0xA, data)
                continue
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the browser")
            if opcode == 0xA:
                continue
            message += data
            if b0 & 0x80:
                return message.decode("utf-8")

    def close(self) -> None:
        try:
            self._frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Chromium:
    """A headless Chromium process and a DevTools connection to it (use as a context manager)."""

    def __init__(self, executable: Optional[str] = None, timeout: float = 60.0, extra_flags: Optional[List[str]] = None) -> None:
        self.executable = executable or find_chromium()
        if not self.executable:
            raise FileNotFoundError("chromium not found (set VOSBATCH_CHROMIUM or install chromium)")
        self.timeout = timeout
        self.extra_flags = extra_flags or []
        self.events: List[Dict[str, Any]] = []
        self._id = 0

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="vosbatch-chromium-")
        self.log = open(Path(self.profile) / "chromium.log", "w+")
        cmd = [self.executable, *CHROMIUM_FLAGS, *self.extra_flags, f"--user-data-dir={self.profile}",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + self.timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                tail = self.log.read()[-2000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"chromium did not start ({self.executable}):\n{tail}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = WebSocket(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                self.ws.send(json.dumps({"id": 10**9, "method": "Browser.close"}))
            except OSError:
                pass
            ws.close()
        if getattr(self, "proc", None) is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _receive(self) -> Dict[str, Any]:
        msg = json.loads(self.ws.recv())
        if "method" in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> Dict[str, Any]:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = self._receive()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method: str, session: Optional[str] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        deadline = time.time() + (timeout or self.timeout)
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                    return ev
            seen = len(self.events)
            if time.time() > deadline:
                raise TimeoutError(f"no {method} event within {timeout or self.timeout} s")
            self._receive()

    def open(self, url: str, width: int = 1280, height: int = 900) -> "Page":
        """A new tab showing ``url``, with console and log capture on; returns after the load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        page = Page(self, session, len(self.events))
        nav = self.call("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise CDPError(f"{url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str, first_event: int) -> None:
        self.browser, self.session, self.first_event = browser, session, first_event

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Value of a JS expression (promises awaited); page exceptions raise :class:`CDPError`."""
        res = self.browser.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                     "returnByValue": True, "timeout": timeout * 1000}, self.session)
        if "exceptionDetails" in res:
            raise CDPError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def console_errors(self) -> List[str]:
        """Uncaught exceptions, console.error/assert calls and error log entries (e.g. a resource
        that failed to load) seen in this tab so far."""
        out = []
        for ev in self.browser.events[self.first_event:]:
            if ev.get("sessionId") != self.session:
                continue
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        return out

    def screenshot(self, path: Path, full_page: bool = True, max_height: int = 16000) -> Path:
        """PNG of the viewport, or of the whole page (up to ``max_height`` CSS pixels)."""
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.browser.call("Page.getLayoutMetrics", session=self.session)
            content = size.get("cssContentSize") or size["contentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": content["width"],
                                                             "height": min(content["height"], max_height), "scale": 1})
        data = self.browser.call("Page.captureScreenshot", params, self.session)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


# Waits until every <video> has decoded a frame (readyState >= 2) or failed, and every <img> has
# loaded or failed, then reports each one's state.
MEDIA_STATE_JS = """
(async () => {
  const vids = Array.from(document.querySelectorAll('video'));
  const imgs = Array.from(document.images);
  vids.forEach(v => { if (v.readyState < 2) { v.preload = 'auto'; v.load(); } });
  const deadline = Date.now() + %d;
  while (Date.now() < deadline) {
    const pending = vids.filter(v => v.readyState < 2 && !v.error).length + imgs.filter(i => !i.complete).length;
    if (!pending) break;
    await new Promise(r => setTimeout(r, 100));
  }
  return {
    videos: vids.map(v => ({id: v.id, src: v.currentSrc.slice(0, 120), readyState: v.readyState,
                            error: v.error ? v.error.code : null, width: v.videoWidth, height: v.videoHeight,
                            duration: v.duration})),
    images: imgs.map(i => ({src: i.src.slice(0, 120), complete: i.complete, naturalWidth: i.naturalWidth,
                            naturalHeight: i.naturalHeight})),
  };
})()
"""


def media_state(page: Page, timeout_ms: int = 20000) -> Dict[str, Any]:
    return page.evaluate(MEDIA_STATE_JS % timeout_ms, timeout=timeout_ms / 1000 + 10)
