"""A throwaway Kubo (IPFS) daemon for tests.

`KuboDaemon` owns a temporary repo and two loopback ports. The repo and the ports
survive `stop()`, so a test can kill the daemon in the middle of a write, `start()` it
again and check what persisted. Nothing listens on or dials anything but 127.0.0.1:
the daemon runs with `--offline`, with no swarm addresses and no bootstrap peers.

The API is synchronous so that it can be driven from plain pytest fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

KUBO_VERSION = "v0.43.1"  # keep in step with scripts/install-kubo.sh

# A CID whose bytes are inlined in the CID itself (identity hash of b""), so the gateway
# can serve it without any block store or network: a cheap readiness probe.
_EMPTY_IDENTITY_CID = "bafkqaaa"


def find_kubo_binary() -> str | None:
    """Return the Kubo binary to test against, or None if there is none.

    Order: $ANYHAMT_KUBO_BIN (returned even if it does not exist, so that a wrong
    setting fails loudly instead of silently skipping), then the cache written by
    scripts/install-kubo.sh, then `ipfs` on PATH.
    """
    explicit = os.environ.get("ANYHAMT_KUBO_BIN")
    if explicit:
        return explicit
    cache_root = os.environ.get("ANYHAMT_KUBO_CACHE") or Path.home() / ".cache/anyhamt/kubo"
    cached = Path(cache_root) / KUBO_VERSION / "ipfs"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("ipfs")


def _free_loopback_port() -> int:
    # The port is free now; another process could take it before Kubo binds it, but on a
    # test machine that race is rare enough, and start() reports it clearly if it happens.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class KuboDaemonError(RuntimeError):
    pass


class KuboDaemon:
    """One Kubo daemon on a private temporary repo.

    Typical use::

        daemon = KuboDaemon(binary)
        daemon.start()
        ... httpx.post(f"{daemon.rpc_url}/api/v0/id") ...
        daemon.stop()      # the repo and ports stay; start() again resumes
        daemon.close()     # stops if needed and deletes the repo
    """

    def __init__(
        self,
        binary: str,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.api_port = _free_loopback_port()
        self.gateway_port = _free_loopback_port()
        self.rpc_url = f"http://127.0.0.1:{self.api_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="anyhamt-kubo-"))
        self.repo_path = self._tmp / "repo"
        self.log_path = self._tmp / "daemon.log"
        self._env = {
            **os.environ,
            "IPFS_PATH": str(self.repo_path),
            # Kubo can report anonymous usage telemetry; tests must stay on loopback.
            "IPFS_TELEMETRY": "off",
        }
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._init_repo()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the daemon on the existing repo and wait until RPC and gateway answer."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            log.write(f"--- ipfs daemon start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [self.binary, "daemon", "--offline"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Shut the daemon down gracefully (SIGTERM), killing it if that takes too long."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the daemon abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the daemon and delete its repo. The object is unusable afterwards."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> KuboDaemon:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------

    def _ipfs(self, *args: str) -> None:
        result = subprocess.run(
            [self.binary, *args],
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise KuboDaemonError(
                f"`ipfs {' '.join(args)}` failed ({result.returncode}):\n"
                + result.stderr.decode(errors="replace")
            )

    def _init_repo(self) -> None:
        # The `test` profile already binds everything to loopback, empties Bootstrap and
        # turns off MDNS; the settings below make the rest explicit.
        self._ipfs("init", "--empty-repo", "--profile=test")
        settings = {
            "Addresses.API": f'"/ip4/127.0.0.1/tcp/{self.api_port}"',
            "Addresses.Gateway": f'"/ip4/127.0.0.1/tcp/{self.gateway_port}"',
            "Addresses.Swarm": "[]",
            "Bootstrap": "[]",
            "Discovery.MDNS.Enabled": "false",
            # AutoConf would fetch network defaults from a remote URL.
            "AutoConf.Enabled": "false",
            # The gateway must never try to fetch missing blocks: answer from the repo.
            "Gateway.NoFetch": "true",
        }
        for key, value in settings.items():
            self._ipfs("config", "--json", key, value)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        probes = [
            ("POST", f"{self.rpc_url}/api/v0/id"),
            ("GET", f"{self.gateway_url}/ipfs/{_EMPTY_IDENTITY_CID}"),
        ]
        last_error = "no attempt made"
        with httpx.Client(timeout=2.0) as client:
            while probes:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise KuboDaemonError(
                        f"ipfs daemon exited with {self._proc.returncode} during startup;"
                        f" log {self.log_path}:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise KuboDaemonError(
                        f"ipfs daemon not ready after {self.startup_timeout}s"
                        f" ({last_error}); log {self.log_path}:\n{self.log_tail()}"
                    )
                method, url = probes[0]
                try:
                    response = client.request(method, url)
                except httpx.TransportError as exc:
                    last_error = f"{method} {url}: {exc!r}"
                else:
                    if response.status_code == 200:
                        probes.pop(0)
                        continue
                    last_error = f"{method} {url}: HTTP {response.status_code}"
                time.sleep(0.05)
