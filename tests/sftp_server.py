"""An SSH server with the SFTP subsystem only, for DVC's ssh remote in the tests marked `services`
(tests/services.py starts it as a child process).

    python tests/sftp_server.py PORT HOST_KEY AUTHORIZED_KEYS

Listens on 127.0.0.1:PORT, accepts public-key logins of any user whose key is in AUTHORIZED_KEYS,
serves the machine's own paths over SFTP (as OpenSSH's sftp-server does) and refuses shells and
commands. Prints "listening" once it accepts connections; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncssh


async def serve(port: int, host_key: str, authorized_keys: str) -> None:
    server = await asyncssh.listen(
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        sftp_factory=True,
        allow_scp=False,
    )
    print("listening", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
