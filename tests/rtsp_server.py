"""A real RTSP server for the live-source tests: GStreamer's RTSP server serving a live test pattern in H.264.

Run with the system Python that has GStreamer's introspection bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,ugly}), not the project's interpreter:

    /usr/bin/python3 tests/rtsp_server.py PORT [PATH]     # serves rtsp://127.0.0.1:PORT/PATH (default /test)

Prints `ready rtsp://127.0.0.1:PORT/PATH` on stdout once it listens; SIGTERM or SIGINT stop it. Killing it
(SIGKILL) is how a test makes a camera vanish.
"""

from __future__ import annotations

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - after require_version

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )"
)


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: rtsp_server.py PORT [PATH]", file=sys.stderr)
        return 2
    port, path = argv[0], (argv[1] if len(argv) > 1 else "/test")
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)  # every client (and every reconnect) sees the one live stream
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server.py: cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"ready rtsp://127.0.0.1:{port}{path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
