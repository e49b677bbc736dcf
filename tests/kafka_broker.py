"""A single-node Kafka broker in KRaft mode, from the jars set-up cached (``fstore.engine.jars.broker_dir``).

For the streaming tests and bench: ``kafka.tools.StorageTool format`` then ``kafka.Kafka server.properties``
in a JVM of its own, on 127.0.0.1 with free ports, its data in the folder given; stopped by its PID.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners={protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners={protocol}://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map={protocol}:{protocol},CONTROLLER:PLAINTEXT
inter.broker.listener.name={protocol}
{security}log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KafkaBroker:
    """``start()`` returns once the broker answers on its port; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, jars: Path, folder: Path, *, sasl_users: dict[str, str] | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        """``sasl_users``: its listener takes SASL logins (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512) of these users. ``tls``: (certificate,
        PKCS#8 key) in PEM, its listener speaks TLS with them. Both: SASL_SSL."""
        self.jars, self.folder = jars, folder
        self.port, self.controller = _free_port(), _free_port()
        self.sasl_users, self.tls = sasl_users, tls
        self.process: subprocess.Popen | None = None

    @property
    def protocol(self) -> str:
        if self.sasl_users is not None:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_conf(self) -> dict[str, str]:
        """What a librdkafka client (confluent-kafka) needs to reach it: its admin user when it takes SASL."""
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.protocol}
        if self.sasl_users is not None:
            conf.update({"sasl.mechanism": "PLAIN", "sasl.username": "admin", "sasl.password": "admin-secret"})
        if self.tls is not None:
            conf["ssl.ca.pem"] = self.tls[0]
        return conf

    def _security(self) -> str:
        """The listener's SASL and TLS lines of server.properties (PEM values with their line breaks escaped)."""
        lines = []
        if self.sasl_users is not None:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            listener = f"listener.name.{self.protocol.lower()}"
            lines += ["sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", "sasl.mechanism.inter.broker.protocol=PLAIN",
                      f"{listener}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
                      f'required username="admin" password="admin-secret" user_admin="admin-secret" {users};',
                      *(f"{listener}.scram-sha-{bits}.sasl.jaas.config=org.apache.kafka.common.security.scram."
                        "ScramLoginModule required;" for bits in (256, 512))]
        if self.tls is not None:
            cert, key = (pem.strip().replace("\n", "\\n") for pem in self.tls)
            lines += ["ssl.keystore.type=PEM", f"ssl.keystore.certificate.chain={cert}", f"ssl.keystore.key={key}",
                      "ssl.truststore.type=PEM", f"ssl.truststore.certificates={cert}"]
        return "".join(line + "\n" for line in lines)

    def _java(self, *args: str, **kwargs) -> list[str]:
        java = shutil.which("java") or "java"
        return [java, "-Xmx512m", "-cp", f"{self.jars}/*", *args]

    def start(self, timeout: float = 60.0) -> "KafkaBroker":
        self.folder.mkdir(parents=True, exist_ok=True)
        props = self.folder / "server.properties"
        props.write_text(SERVER_PROPERTIES.format(port=self.port, controller=self.controller, data=self.folder / "data",
                                                  protocol=self.protocol, security=self._security()))
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = [arg for u, p in (self.sasl_users or {}).items()  # the same users for SCRAM, in the metadata
                 for bits in (256, 512) for arg in ("--add-scram", f"SCRAM-SHA-{bits}=[name={u},password={p}]")]
        formatted = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props),
                                              *scram), capture_output=True, text=True, timeout=timeout)
        if formatted.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed: {formatted.stdout[-500:]} {formatted.stderr[-500:]}")
        log = open(self.folder / "broker.log", "wb")
        self.process = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited {self.process.returncode}: "
                                   f"{(self.folder / 'broker.log').read_text()[-1000:]}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Kafka broker did not answer on {self.bootstrap} within {timeout:.0f} s")

    def _ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            AdminClient({**self.client_conf, "log_level": 0}).list_topics(timeout=5)
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.client_conf)  # kept alive until its futures resolve
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
