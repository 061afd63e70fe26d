"""A TCP proxy that can cut the line: how the multi-host tests put a web "host" apart from one Redis
shard (tests/integration/test_hosts.py).

    python -m tests.proxy LISTEN_PORT TARGET_PORT

Every connection to ``127.0.0.1:LISTEN_PORT`` is forwarded to ``127.0.0.1:TARGET_PORT``.
``SIGUSR1`` cuts the line: from then on nothing is read from either side (bytes already sent stay
in the kernels' buffers, then TCP's flow control stalls both ends), as a partition whose packets
are dropped and retransmitted looks to both ends; new connections are accepted but not answered.
``SIGUSR2`` mends it: everything that waited flows again, in order. ``SIGTERM`` ends the proxy.
(``tc netem`` is not available on these kernels; DESIGN.md, pitfalls.)
"""

from __future__ import annotations

import asyncio
import signal
import sys


class Line:
    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.open.wait()
                data = await reader.read(65536)
                await self.open.wait()  # cut while the read waited: hold the bytes until mended
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def main(listen: int, target: int) -> None:
    line = Line()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, line.open.clear)
    loop.add_signal_handler(signal.SIGUSR2, line.open.set)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await line.open.wait()
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(line.pipe(client_reader, server_writer), line.pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print(f"proxy 127.0.0.1:{listen} -> 127.0.0.1:{target}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
