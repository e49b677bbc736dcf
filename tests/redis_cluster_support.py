"""A real 3-master Redis Cluster for tests: redis-server processes of our own on loopback, stopped by PID."""
from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int = 3) -> list[int]:
    """Loopback ports nobody listens on, each with its cluster bus port (+10000) free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        port = rng.randrange(20000, 30000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters (no replicas, no persistence) joined by
    ``redis-cli --cluster create``. ``cluster-require-full-coverage no``: with a master down, the others
    keep serving their slots (the production setting for a cluster that should degrade, not stop)."""

    def __init__(self, folder: Path, ports: list[int] | None = None) -> None:
        self.folder = Path(folder)
        self.ports = ports or free_cluster_ports()
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_node(self, port: int) -> None:
        folder = self.folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "redis.log", "ab")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--cluster-enabled", "yes", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-config-file", str(folder / "nodes.conf"), "--cluster-node-timeout", "2000",
             "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait(lambda: self.client(port).ping(), f"redis-server on port {port} did not start")

    def start(self) -> "RedisClusterServers":
        for port in self.ports:
            self.start_node(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def wait_ok(self, ports: list[int] | None = None) -> None:
        """Until every (given) node says ``cluster_state:ok`` (bounded: 30 s)."""
        for port in ports or self.ports:
            self._wait(lambda port=port: self.client(port).cluster("info")["cluster_state"] == "ok",
                       f"the Redis Cluster on {self.ports} did not reach cluster_state:ok")

    @staticmethod
    def _wait(check, message: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if check():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def owner(self, key: bytes | str) -> int:
        """The port of the master serving ``key``'s slot (``CLUSTER SLOTS`` of a running node)."""
        port = next(p for p in self.ports if p in self.procs)
        client = self.client(port)
        slot = client.cluster("keyslot", key)
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def flush(self) -> None:
        for port in self.ports:
            if port in self.procs and self.procs[port].poll() is None:
                self.client(port).flushall()

    def everything(self) -> dict[bytes, object]:
        return everything(self.url)

    def stop_node(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.stop_node(port)


def seed_clients(url: str) -> list[redis.Redis]:
    """A plain client per seed of a ``redis+cluster://`` URL (in the tests' clusters: every master)."""
    from fstore.storage.online.redis_cluster import parse_cluster_url

    return [redis.Redis(host=h, port=p, socket_timeout=2) for h, p in parse_cluster_url(url)[0]]


def everything(url: str) -> dict[bytes, object]:
    """Every key of every master: hashes as ``HGETALL``, strings as ``GET``."""
    out: dict[bytes, object] = {}
    for client in seed_clients(url):
        for key in client.keys("*"):
            out[key] = client.hgetall(key) if client.type(key) == b"hash" else client.get(key)
        client.close()
    return out
