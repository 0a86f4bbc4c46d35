"""`--output mqtt://[USER@]HOST[:PORT]/PREFIX` (`mqtts://` for TLS): a run's alarms, scores and snapshots on an
MQTT broker (paho-mqtt, `pip install 'stprompt[mqtt]'`), for Home Assistant, Node-RED and the like.

Topics (`<source>`: the source's short id, as the video sink names its files: `source_slug`, only letters,
digits, `.`, `_` and `-`, so never `+`, `#` or `/`; prefixed `i-` where two sources share one):

- `PREFIX/available`: `online` / `offline`, retained, QoS 1. `offline` is the connection's last will (a killed
  process or a lost network) and is published by a clean close.
- `PREFIX/<source>/events`: the source's alarm events (every state) and its `source` events (down / up), QoS 1,
  each the JSON object the JSON Lines sink writes.
- `PREFIX/<source>/score`: its frame events, QoS 0, throttled: at most one per `score_interval` seconds of the
  source's own timeline (the event's `time`; wall-clock for cameras), except that the frame event of a snippet that
  starts or ends an alarm always goes out (a chart shows both crossings). Not buffered while the broker is
  unreachable (a live gauge: stale scores are not replayed).
- `PREFIX/<source>/snapshot`: a JPEG of an alarm's frame annotated as the video sink draws it (heat map, boxes,
  score bar), retained, QoS 1: one when the alarm starts (its first snippet: a notification can carry an image at
  once) and one when it ends (its highest-scoring snippet, the end event's peak frame), each after its event.
- `PREFIX/engine`: a remote encoder's `engine` events (down / up), QoS 1 (an event of a later kind without a
  source: `PREFIX/events`).

Delivery: `write()` never waits for the network. Messages go into a bounded buffer that one sender thread
hands to paho in order while connected; it runs paho's network loop itself (no `loop_start`), so nothing new is
handed between a reconnect and the re-send of what was unacknowledged, and a QoS 1 message stays in paho's
session until the broker acknowledges it. At least once, in order: what was in flight when the connection went is
sent again in order, so a subscriber may see that short run twice (drop repeats by `id`, `state` and `frame`)
and the last message it got is always the newest. A full buffer drops its oldest message (counted; one line
the first time, the count at close: `dropped`). The broker unreachable at start-up is no error: one line says
so, detection goes on, messages are buffered and the connection is retried with backoff (0.5 s doubling to 8 s),
as for a lost connection. A broker that refuses the credentials or client id at start-up is a one-line error.
`close()` waits up to `flush` seconds for the buffer to drain, then says what was not delivered.

Secrets: the password only from STP_MQTT_PASSWORD (a URI with one is refused; it is never printed). TLS
(`mqtts://`, port 8883): the system's CAs, or only the CA file STP_MQTT_CA names; the host name is checked.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2

if f"{__package__}.sinks" not in sys.modules:  # imported before sinks, which imports this module for OUTPUTS: let
    del sys.modules[__name__]  # sinks' import of it be the one that completes (the module this import returns)
    importlib.import_module(f"{__package__}.sinks")

from ..errors import UserError, first_line, inform, warn  # noqa: E402
from .sinks import OutputContext, Sink, annotate, source_slug  # noqa: E402
from .sources import backoff_delays  # noqa: E402

if TYPE_CHECKING:
    from .detector import Snippet

PASSWORD_ENV = "STP_MQTT_PASSWORD"
CA_ENV = "STP_MQTT_CA"
INSTALL_HINT = "pip install 'stprompt[mqtt]'"
DEFAULT_PREFIX = "stprompt"
CONNECT_TIMEOUT_S = 3.0  # one TCP (+ TLS) connect attempt, and how long start-up waits for the first answer
GOODBYE_S = 1.0  # how long a clean close waits for the broker to acknowledge `offline`
WINDOW = 20  # QoS 1 messages handed to paho and not yet acknowledged
LOOP_S = 0.05  # the sender's network-loop wait: the most a message waits in the buffer on a connected link
BACKOFF = tuple(backoff_delays(0.5, 8.0))
FATAL_CONNACK = (132, 133, 134, 135)  # unsupported protocol, client id rejected, bad user name or password, not
# authorized: a mistake to fix, not an outage to wait out (MQTT 5 reason codes; paho maps 3.1.1's onto them)
NEW_STATES, UPDATE_STATES, END_STATES = ("new", "start"), ("update", "ongoing"), ("end",)  # events-1 and before


def import_paho() -> Any:
    """paho.mqtt.client, or a one-line UserError saying how to install it."""
    try:
        import paho.mqtt.client as client
    except ImportError:
        raise UserError(f"MQTT output needs paho-mqtt: {INSTALL_HINT}") from None
    return client


@dataclass(frozen=True)
class MqttSettings:
    """What an mqtt:// or mqtts:// URI says, checked (`parse`)."""

    tls: bool
    host: str
    port: int
    prefix: str
    user: str | None = None
    score_interval: float = 1.0
    queue: int = 10_000
    client_id: str = ""
    keepalive: int = 30
    flush: float = 5.0

    OPTIONS: ClassVar[tuple[str, ...]] = ("score_interval", "queue", "client_id", "keepalive", "flush")

    @property
    def target(self) -> str:
        """The broker and prefix, for 'given twice' (two outputs on one prefix would share `available`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}/{self.prefix}"

    @classmethod
    def parse(cls, uri: str, name: str) -> MqttSettings:
        """UserError (one line, naming the output as `name`) for anything the URI gets wrong."""
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if parts.password is not None:
            raise UserError(f"{name}: no password in the URI; set it in the {PASSWORD_ENV} environment variable")
        try:
            port = parts.port
        except ValueError:
            raise UserError(f"{name}: the port must be a number from 1 to 65535") from None
        if not parts.hostname:
            raise UserError(f"{name}: no broker host; use {scheme}://[USER@]HOST[:PORT]/PREFIX")
        if port == 0:
            raise UserError(f"{name}: the port must be a number from 1 to 65535")
        settings = cls(scheme == "mqtts", parts.hostname, port or (8883 if scheme == "mqtts" else 1883),
                       _prefix(unquote(parts.path), name), unquote(parts.username) if parts.username else None,
                       client_id=f"stp-run-{uuid.uuid4().hex[:12]}")  # fmt: skip
        return settings._with_options(parts.query, name)

    def _with_options(self, query: str, name: str) -> MqttSettings:
        pairs = parse_qsl(query, keep_blank_values=True)
        keys = [k for k, _ in pairs]
        for key in keys:
            if key not in self.OPTIONS:
                raise UserError(f"{name}: unknown option {key!r}; use {', '.join(self.OPTIONS)}")
            if keys.count(key) > 1:
                raise UserError(f"{name}: option {key!r} given twice")
        values = dict(pairs)
        changes: dict[str, Any] = {}
        if "score_interval" in values:
            changes["score_interval"] = _number(values, "score_interval", name, float, 0)
        if "queue" in values:
            changes["queue"] = _number(values, "queue", name, int, 1)
        if "keepalive" in values:
            changes["keepalive"] = _number(values, "keepalive", name, int, 5)
        if "flush" in values:
            changes["flush"] = _number(values, "flush", name, float, 0)
        if "client_id" in values:
            client_id = values["client_id"]
            if not client_id or len(client_id) > 128 or not client_id.isprintable():
                raise UserError(f"{name}: client_id must be 1 to 128 printable characters")
            changes["client_id"] = client_id
        return replace(self, **changes)


def _prefix(path: str, name: str) -> str:
    """The topic prefix: the URI's path without its outer slashes (default `stprompt`); no wildcard, no empty
    level, not a broker's `$` topic."""
    prefix = path.strip("/") or DEFAULT_PREFIX
    if any(c in prefix for c in "+#\0") or "//" in prefix or prefix.startswith("$"):
        raise UserError(f"{name}: the topic prefix {prefix!r} must not contain '+', '#' or an empty level, nor "
                        "start with '$'")  # fmt: skip
    return prefix


def _number(values: dict[str, str], key: str, name: str, kind: type, least: float) -> Any:
    try:
        value = kind(values[key])
    except ValueError:
        value = None
    if value is None or not value >= least or value != value or value == float("inf"):
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"{name}: {key} must be {what} >= {least:g}, got {values[key]!r}")
    return value


def _password(settings: MqttSettings, name: str) -> str | None:
    password = os.environ.get(PASSWORD_ENV) or None
    if password is not None and settings.user is None:
        raise UserError(f"{name}: {PASSWORD_ENV} is set but the URI names no user (mqtt://USER@HOST/PREFIX)")
    return password


def _tls_context(name: str) -> ssl.SSLContext:
    """The system's CAs, or only the file STP_MQTT_CA names; host names checked."""
    ca = os.environ.get(CA_ENV) or None
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as err:
        raise UserError(f"{name}: {CA_ENV}={ca}: not a readable CA file ({first_line(err)})") from None


@dataclass
class Message:
    """One publish; a callable payload is made on the sender thread (a snapshot's JPEG)."""

    topic: str
    payload: bytes | Callable[[], bytes]
    qos: int = 1
    retain: bool = False


class Publisher:
    """The sender thread and the paho client it alone drives: a bounded in-order buffer in, the broker out.

    `put()` never waits on the network. The thread connects (retrying with backoff), hands buffered messages to
    paho while connected (at most WINDOW QoS 1 ones unacknowledged) and runs paho's network loop between hand-offs.
    """

    def __init__(self, settings: MqttSettings, name: str, password: str | None = None,
                 tls: ssl.SSLContext | None = None):  # fmt: skip
        mqtt = import_paho()
        self.settings, self.name, self.mqtt = settings, name, mqtt
        self.available = f"{settings.prefix}/available"
        self.buffer: deque[Message] = deque()
        self.lock = threading.Lock()
        self.state = "down"  # down | connecting | up
        self.dropped = 0  # messages the full buffer dropped
        self.sent = 0  # messages handed to paho
        self.notes: list[str] = []  # state changes, printed on the caller's thread (`take_notes`)
        self.first = threading.Event()  # the first connection attempt has an outcome
        self.first_error: str | None = None
        self.first_refused: int | None = None  # the first attempt's refusal (a CONNACK reason code)
        self.refused: int | None = None  # the broker's last refusal (a CONNACK reason code)
        self.refusal = ""
        self._unacked: deque[Any] = deque()  # MQTTMessageInfo of QoS 1 messages handed to paho
        self._attempts = 0  # failed connection attempts in a row
        self._next_attempt = 0.0
        self._since = 0.0  # when the pending CONNECT went out
        self._was_up = False
        self._closing_at: float | None = None
        self._abort = False
        self.client = self._client(password, tls)
        self.thread = threading.Thread(target=self._run, name="stp-mqtt", daemon=True)
        self.thread.start()

    def _client(self, password: str | None, tls: ssl.SSLContext | None) -> Any:
        s, mqtt = self.settings, self.mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)  # fmt: skip
        if s.user is not None:
            client.username_pw_set(s.user, password)
        if tls is not None:
            client.tls_set_context(tls)
        client.will_set(self.available, "offline", qos=1, retain=True)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(0)  # the window is ours (WINDOW); paho's would queue out of our sight
        client.on_connect = self._on_connect
        client.connect_async(s.host, s.port, s.keepalive)
        return client

    # -- the caller's side ----------------------------------------------------------------------------
    def put(self, message: Message) -> bool:
        """Buffer a message; False when the full buffer dropped its oldest to make room."""
        with self.lock:
            full = len(self.buffer) >= self.settings.queue
            if full:
                self.buffer.popleft()
                self.dropped += 1
            self.buffer.append(message)
        return not full

    @property
    def connected(self) -> bool:
        return self.state == "up"

    def take_notes(self) -> list[str]:
        with self.lock:
            notes, self.notes = self.notes, []
        return notes

    def undelivered(self) -> int:
        """Messages buffered or handed to paho and not acknowledged by the broker."""
        with self.lock:
            waiting = len(self.buffer)
        for _ in range(3):  # the sender may be pruning the window meanwhile (only where close() gave up on it)
            with contextlib.suppress(RuntimeError):
                return waiting + sum(not info.is_published() for info in tuple(self._unacked))
        return waiting + len(self._unacked)

    def close(self, timeout: float) -> int:
        """Deliver for up to `timeout` seconds, publish `offline`, disconnect; the undelivered count."""
        with self.lock:
            self._closing_at = time.monotonic() + timeout
        self.thread.join(timeout + CONNECT_TIMEOUT_S + GOODBYE_S + 1.0)
        if self.thread.is_alive():  # stuck in a connect: leave it (a daemon thread) with nothing more to do
            self._abort = True
            self.thread.join(1.0)
        return self.undelivered()

    # -- the sender thread ----------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)

    def _run(self) -> None:
        try:
            while not self._done():
                if self.state == "down":
                    self._attempt()
                    continue
                if self.state == "up":
                    self._hand()
                self._loop()
            self._goodbye()
        except Exception as err:  # noqa: BLE001 - a surprise in paho must not pass silently
            self._note(f"{self.name}: MQTT sender stopped: {first_line(err)}")
        finally:
            self.first.set()

    def _done(self) -> bool:
        if self._abort:
            return True
        with self.lock:
            closing, waiting = self._closing_at, len(self.buffer)
        if closing is None:
            return False
        return time.monotonic() >= closing or (not waiting and not self._pending())

    def _pending(self) -> bool:
        """Whether a QoS 1 message handed to paho awaits its PUBACK (those acknowledged in order are forgotten)."""
        while self._unacked and self._unacked[0].is_published():
            self._unacked.popleft()
        return bool(self._unacked)

    def _attempt(self) -> None:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, LOOP_S))
            return
        self.refused = None
        try:
            self.client.reconnect()  # closes any old socket, connects (TCP, TLS) and sends CONNECT
        except (OSError, ValueError) as err:  # refused, unreachable, no such host, TLS handshake
            self._failed(first_line(err))
            return
        self.state, self._since = "connecting", time.monotonic()

    def _loop(self) -> None:
        try:
            rc = self.client.loop(timeout=LOOP_S)
        except (OSError, ValueError) as err:
            self._lost(first_line(err))
            return
        if rc != self.mqtt.MQTT_ERR_SUCCESS:
            self._lost(self.mqtt.error_string(rc))
        elif self.state == "connecting" and time.monotonic() - self._since > CONNECT_TIMEOUT_S:
            self._lost(f"no CONNACK within {CONNECT_TIMEOUT_S:g} s")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.refused, self.refusal = int(reason.value), str(reason)
            return
        self.state, self._attempts = "up", 0
        client.publish(self.available, "online", qos=1, retain=True)
        if self.first.is_set():  # after an outage, or a start-up that found no broker
            again = " again" if self._was_up else ""
            self._note(f"{self.name}: connected to the MQTT broker{again}; {self.undelivered()} messages to deliver")
        self._was_up = True
        self.first.set()

    def _lost(self, reason: str) -> None:
        if self.refused is not None:
            reason = f"refused: {self.refusal}"
        if self.state == "up":
            self._note(f"{self.name}: connection to the MQTT broker lost ({reason}); reconnecting, messages are "
                       "buffered")  # fmt: skip
        self._failed(reason)

    def _failed(self, reason: str) -> None:
        self.state = "down"
        self._next_attempt = time.monotonic() + BACKOFF[min(self._attempts, len(BACKOFF) - 1)]
        self._attempts += 1
        if not self.first.is_set():
            self.first_error, self.first_refused = reason, self.refused
            self.first.set()

    def _hand(self) -> None:
        """Buffered messages to paho, oldest first, while fewer than WINDOW QoS 1 ones await their PUBACK."""
        while self.state == "up":
            self._pending()  # forget what was acknowledged
            if len(self._unacked) >= WINDOW:
                return
            with self.lock:
                message = self.buffer.popleft() if self.buffer else None
            if message is None:
                return
            try:
                payload = message.payload() if callable(message.payload) else message.payload
            except Exception as err:  # noqa: BLE001 - a snapshot that does not encode costs that snapshot only
                self._note(f"{self.name}: MQTT message for {message.topic} not sent: {first_line(err)}")
                continue
            info = self.client.publish(message.topic, payload, qos=message.qos, retain=message.retain)
            self.sent += 1
            if message.qos:
                self._unacked.append(info)

    def _goodbye(self) -> None:
        """`offline` (retained) and DISCONNECT on a live connection; the broker keeps the will otherwise."""
        if self.state != "up" or self._abort:
            return
        info = self.client.publish(self.available, "offline", qos=1, retain=True)
        end = time.monotonic() + GOODBYE_S
        while self.state == "up" and not info.is_published() and time.monotonic() < end:
            self._loop()
        self.client.disconnect()
        for _ in range(3):  # let paho see the socket close
            with contextlib.suppress(OSError, ValueError):
                if self.client.loop(timeout=0.1) != self.mqtt.MQTT_ERR_SUCCESS:
                    break


def _phase(event: dict[str, Any]) -> str:
    """An alarm event's state as new / update / end, in today's words and events-1's."""
    state = event.get("state")
    return "new" if state in NEW_STATES else "end" if state in END_STATES else "update"


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def _keep(snippet: Snippet) -> Snippet:
    """A copy that outlives the detector's buffers (the image may be reused once the snippet is scored)."""
    return replace(snippet, event=dict(snippet.event), image=snippet.image.copy(),
                   heat=None if snippet.heat is None else snippet.heat.copy(),
                   boxes=None if snippet.boxes is None else snippet.boxes.copy())  # fmt: skip


class MqttSink(Sink):
    """`mqtt://[USER@]HOST[:PORT]/PREFIX[?OPTIONS]`, `mqtts://` for TLS: events, scores and snapshots on a broker
    (topics, delivery and secrets: the module docstring).

    Default port 1883 (mqtts: 8883), default prefix `stprompt`. The password comes only from STP_MQTT_PASSWORD
    (with a USER in the URI), a CA file for mqtts:// only from STP_MQTT_CA. Options (an unknown one is refused):

    - `score_interval=1.0`: seconds of a source's timeline between two messages on its `score` topic (0: every
      frame event); the frame events that start or end an alarm always go out
    - `queue=10000`: messages buffered while the broker is slow or unreachable; when full the oldest is dropped
      (counted: `dropped`)
    - `client_id=ID`: the MQTT client id (default `stp-run-` and 12 random hex digits: two runs never take over
      each other's connection)
    - `keepalive=30`: seconds between keep-alive pings; the broker publishes the will after 1.5 times this when
      the process hangs or the network goes (at once when the process dies)
    - `flush=5`: seconds `close()` waits for the buffer to reach the broker before it says what was not delivered
    """

    schemes = ("mqtt", "mqtts")
    accepts = "mqtt://[USER@]HOST[:PORT]/PREFIX (mqtts:// for TLS) for an MQTT broker"

    def __init__(self, settings: MqttSettings, ctx: OutputContext | None = None, name: str | None = None):
        self.settings = settings
        self.name = name or settings.target
        self.ctx = ctx or OutputContext()
        self.target = settings.target
        self.topics: dict[str, str] = {}  # source id -> its topic-safe short id
        self.last_score: dict[str, float] = {}  # source id -> the `time` of its last score message
        self.pending: dict[tuple[str, int], Snippet] = {}  # snippets whose events are not written yet
        self.best: dict[str, Snippet] = {}  # source id -> the highest-scoring snippet of its open alarm
        self.skipped_scores = 0  # score messages not sent while the broker was unreachable
        self._closed = False
        password = _password(settings, self.name)
        tls = _tls_context(self.name) if settings.tls else None
        self.publisher = Publisher(settings, self.name, password, tls)
        self._first_contact()

    @classmethod
    def from_uri(cls, uri: str, ctx: OutputContext, name: str) -> MqttSink:
        return cls(MqttSettings.parse(uri, name), ctx, name)

    @classmethod
    def check(cls, uri: str, ctx: OutputContext, name: str) -> str | None:
        """The URI, paho, the password's variable and the CA file, without connecting."""
        settings = MqttSettings.parse(uri, name)
        import_paho()
        _password(settings, name)
        if settings.tls:
            _tls_context(name)
        return settings.target

    @property
    def dropped(self) -> int:
        """Messages the full buffer dropped (the run summary's count)."""
        return self.publisher.dropped

    @property
    def stats(self) -> dict[str, int]:
        """Messages handed to paho, dropped, still buffered, and scores not sent while unconnected."""
        return {"sent": self.publisher.sent, "dropped": self.dropped, "buffered": len(self.publisher.buffer),
                "skipped_scores": self.skipped_scores}  # fmt: skip

    def _first_contact(self) -> None:
        """Wait for the first connection attempt: a refusal to fix is an error, an unreachable broker one line."""
        p = self.publisher
        p.first.wait(CONNECT_TIMEOUT_S + 1.0)
        if p.first_refused in FATAL_CONNACK and p.state != "up":
            p.close(0.0)
            raise UserError(f"{self.name}: the MQTT broker refused the connection: {p.refusal}")
        if p.state != "up":
            why = p.first_error or f"no answer within {CONNECT_TIMEOUT_S:g} s"
            warn(f"{self.name}: MQTT broker unreachable ({why}); detection goes on, messages are buffered (up to "
                 f"{self.settings.queue}) and the connection is retried in the background")  # fmt: skip

    # -- topics ---------------------------------------------------------------------------------------
    def topic(self, source: str | None, leaf: str) -> str:
        """`PREFIX/<source short id>/<leaf>`; `PREFIX/<leaf>` for an event without a source."""
        if source is None:
            return f"{self.settings.prefix}/{leaf}"
        if source not in self.topics:
            short = self.ctx.names.get(source)
            if short is None:  # a source the context did not list: its own slug, made unique here
                short = source_slug(re.sub(r"^\d+:", "", source))
                if short.casefold() in {t.casefold() for t in self.topics.values()}:
                    short = f"{len(self.topics)}-{short}"
            self.topics[source] = short
        return f"{self.settings.prefix}/{self.topics[source]}/{leaf}"

    # -- the Sink interface ---------------------------------------------------------------------------
    def write(self, events: list[dict[str, Any]]) -> None:
        self._say_notes()
        crossings = {(e.get("source"), e.get("frame")) for e in events
                     if e.get("type") == "alarm" and _phase(e) in ("new", "end")}  # fmt: skip
        for e in events:
            kind = e.get("type")
            if kind == "frame":
                self._score(e, (e.get("source"), e.get("frame")) in crossings)
            elif kind == "engine":
                self._put(Message(self.topic(None, "engine"), _json(e)))
            else:  # alarm, source, and any later kind: the source's lifecycle topic
                self._put(Message(self.topic(e.get("source"), "events"), _json(e)))
                if kind == "alarm":
                    self._snapshot(e)
        for e in events:
            if e.get("type") == "frame":
                self.pending.pop((e.get("source"), e.get("frame")), None)

    def snippet(self, snippet: Snippet) -> None:
        """Held until its events are written: an alarm event picks its snapshot frame from here."""
        self.pending[(snippet.source, snippet.event.get("frame"))] = snippet
        while len(self.pending) > 4096:  # events that never came (a failed detector call): forget the oldest
            self.pending.pop(next(iter(self.pending)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        left = self.publisher.close(self.settings.flush)
        self._say_notes()
        if left:
            warn(f"{self.name}: {left} MQTT messages not delivered: the broker did not take them within flush="
                 f"{self.settings.flush:g} s")  # fmt: skip
        if self.dropped:
            warn(f"{self.name}: {self.dropped} MQTT messages dropped in all: the buffer (queue={self.settings.queue}) "
                 "was full")  # fmt: skip

    # -- internals ------------------------------------------------------------------------------------
    def _say_notes(self) -> None:
        for note in self.publisher.take_notes():
            inform(note)

    def _put(self, message: Message) -> None:
        if not self.publisher.put(message) and self.publisher.dropped == 1:
            warn(f"{self.name}: MQTT buffer full ({self.settings.queue} messages): dropping the oldest; the count "
                 "comes at the end (raise ?queue= to buffer more)")  # fmt: skip

    def _score(self, event: dict[str, Any], crossing: bool) -> None:
        """The throttled score stream: one per score_interval of the source's time, and every alarm crossing."""
        source, t = event.get("source"), event.get("time")
        t = time.monotonic() if t is None else float(t)
        last = self.last_score.get(source)
        due = last is None or t < last or t - last >= self.settings.score_interval
        if not (due or crossing):
            return
        if not self.publisher.connected:  # a live gauge: nothing stale is replayed after an outage
            self.skipped_scores += 1
            return
        self.last_score[source] = t
        self._put(Message(self.topic(source, "score"), _json(event), qos=0))

    def _snapshot(self, event: dict[str, Any]) -> None:
        """The alarm's first frame when it starts, its highest-scoring one when it ends (after the event)."""
        source, phase = event.get("source"), _phase(event)
        snippet = self.pending.get((source, event.get("frame")))
        if phase == "end":
            best = self.best.pop(source, None)
            if best is not None:
                self._put_snapshot(best)
            return
        if snippet is None:
            return
        if phase == "new" or self._new_peak(event, snippet, self.best.get(source)):
            self.best[source] = _keep(snippet)
        if phase == "new":
            self._put_snapshot(self.best[source])

    @staticmethod
    def _new_peak(event: dict[str, Any], snippet: Snippet, best: Snippet | None) -> bool:
        """The alarm's peak moved to this snippet: as its event says (events-1's `peak_frame`), else by score."""
        if "peak_frame" in event:
            return event["peak_frame"] == event.get("frame")
        return best is None or snippet.event["score"] > best.event["score"]

    def _put_snapshot(self, snippet: Snippet) -> None:
        payload = functools.partial(self._jpeg, snippet)
        self._put(Message(self.topic(snippet.source, "snapshot"), payload, qos=1, retain=True))

    def _jpeg(self, snippet: Snippet) -> bytes:
        """The frame as the video sink draws it (heat map, boxes, score bar), JPEG-encoded on the sender thread."""
        img = annotate(snippet, self.ctx.threshold)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("OpenCV could not encode the snapshot as JPEG")
        return buf.tobytes()
