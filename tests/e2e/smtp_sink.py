"""A private SMTP server for one test (Debian's python3-aiosmtpd).

Every message it accepts becomes one JSON file in DIR (written atomically):
envelope recipients, Message-ID, Subject, the text/plain and text/html parts
decoded. With --delay-ms it waits after saving and before answering 250:
the window in which a client killed with SIGKILL leaves a message delivered
that it never heard was, which is what a test of resends needs.

usage: python3 smtp_sink.py PORT DIR [--delay-ms N]
"""
import argparse
import asyncio
import email
import email.policy
import itertools
import json
import os
import signal
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory, delay):
        self.directory = directory
        self.delay = delay
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        doc = {
            "rcpt": list(envelope.rcpt_tos),
            "mail_from": envelope.mail_from,
            "message_id": msg.get("Message-ID", ""),
            "subject": msg.get("Subject", ""),
            "content_type": msg.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
        }
        n = next(self.counter)
        path = os.path.join(self.directory, f"{os.getpid()}-{n:06d}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.rename(path + ".tmp", path)
        if self.delay:
            await asyncio.sleep(self.delay / 1000.0)
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("dir")
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    c = Controller(Sink(a.dir, a.delay_ms), hostname="127.0.0.1", port=a.port)
    c.start()
    print(f"smtp sink on 127.0.0.1:{a.port} writing {a.dir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    c.stop()


if __name__ == "__main__":
    main()
