"""A real SMTP server for delivery's tests (aiosmtpd): stores every message it accepts as
<dir>/<n>.eml and answers 550 for recipients at unknown.invalid (a bounce) and 451 for
recipients at busy.invalid (try again). Prints the port on stdout once it listens."""
import itertools
import os
import socket
import sys

from aiosmtpd.controller import Controller

directory = sys.argv[1]
os.makedirs(directory, exist_ok=True)
counter = itertools.count()


class Store:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@unknown.invalid"):
            return "550 5.1.1 mailbox unavailable"
        if address.endswith("@busy.invalid"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        path = os.path.join(directory, f"{n:06}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"


probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Store(), hostname="127.0.0.1", port=port)
controller.start()
print(port, flush=True)
try:
    # Runs until the test closes our stdin (or kills us).
    sys.stdin.read()
except KeyboardInterrupt:
    pass
controller.stop()
