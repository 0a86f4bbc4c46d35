"""A real Mosquitto broker on 127.0.0.1 for the MQTT sink's tests, and a subscriber that records what it gets.

`.ci/run` apt-installs `mosquitto`; where its binary is missing the tests skip, saying so (`missing_reason`). The
broker runs from a generated config on a free loopback port (anonymous by default, persistence off unless asked)
and restarts on the same port (stop() / start()). Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    """`mosquitto` on PATH, or where Debian's package puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("mosquitto")
    return found or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
                         None)  # fmt: skip


def missing_reason() -> str | None:
    """Why no broker test can run here (they skip saying so), or None."""
    if mosquitto_binary() is None:
        return "no mosquitto binary (apt-get install mosquitto; .ci/run does)"
    if importlib.util.find_spec("paho") is None:
        return "paho-mqtt is not installed (pip install 'stprompt[mqtt]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """`mosquitto -c <generated config>` listening on 127.0.0.1:`port`; `extra` config lines (a TLS listener's
    files, a password file); `persistence`: sessions and queued messages survive stop() / start()."""

    def __init__(self, workdir: Path, *, extra: Sequence[str] = (), persistence: bool = False,
                 anonymous: bool = True):  # fmt: skip
        binary = mosquitto_binary()
        assert binary is not None, missing_reason()
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir / 'db'}/",
            "autosave_interval 0",  # with persistence: saved when it stops
            "max_queued_messages 0",  # a persistent subscriber away during a restart misses nothing
            f"user {getpass.getuser()}",  # started as root, it would drop to `mosquitto` and lose these files
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *extra,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def url(self, prefix: str = "stp", scheme: str = "mqtt", user: str | None = None, query: str = "") -> str:
        who = f"{user}@" if user else ""
        return f"{scheme}://{who}127.0.0.1:{self.port}/{prefix}{'?' + query if query else ''}"

    def start(self) -> Mosquitto:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto not listening on {self.port} after {timeout:.0f} s: {self.tail()}")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM; SIGKILL after 10 s): with persistence, sessions are saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Recorder:
    """A paho subscriber recording every message on `topic` in arrival order (thread-safe). `session`: a fixed
    client id without clean start, so what arrives while it is away (a broker restart) is kept for it."""

    def __init__(self, port: int, topic: str = "#", *, session: bool = False, user: str | None = None,
                 password: str | None = None, tls: Any = None):  # fmt: skip
        import paho.mqtt.client as mqtt

        self.topic = topic
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client_id = f"stp-test-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not session)
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def start(self, timeout: float = 10.0) -> Recorder:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(timeout), f"no SUBACK within {timeout} s"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos)))

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, done: Callable[[Recorder], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self):
                return True
            time.sleep(0.05)
        return done(self)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def retained(port: int, topic: str, timeout: float = 5.0) -> Received | None:
    """What a new subscriber gets first on `topic` (a retained message), or None within `timeout`."""
    with Recorder(port, topic) as fresh:
        fresh.wait_for(lambda r: bool(r.on(topic)), timeout)
        got = fresh.on(topic)
    return got[0] if got else None
