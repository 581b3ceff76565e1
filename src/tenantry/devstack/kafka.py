"""A real Apache Kafka broker (KRaft, single node) on loopback, from the official jars.

No Kafka is embedded in a wheel, so the broker comes from Maven Central: a throw-away POM
naming ``org.apache.kafka:kafka_2.13`` is resolved with ``mvn dependency:copy-dependencies``
into ``<services>/kafka-dist/<version>/libs`` once (Maven's own ``~/.m2`` cache makes a
second fetch cheap), and the broker runs with ``java -cp 'libs/*' kafka.Kafka``. One process
is both controller and broker; its storage is formatted on first start.

Readiness is the broker answering an ``ApiVersions`` request on its client port, which it
only does once its listener is up and it has joined the (one-node) quorum.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tenantry.devstack.errors import ServiceError

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
#: slf4j binding so the broker's log lines reach its log file (the broker ships none).
SLF4J_SIMPLE = ("org.slf4j", "slf4j-simple", "1.7.36")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tenantry.devstack</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>{slf4j[0]}</groupId>
      <artifactId>{slf4j[1]}</artifactId>
      <version>{slf4j[2]}</version>
    </dependency>
  </dependencies>
</project>
"""

_SERVER_PROPERTIES = """\
# Written by tenantry's devstack: one KRaft node, broker and controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
log.segment.bytes=67108864
"""


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceError("Java 17+ is needed to run the Kafka broker; install a JDK")
    return found


def api_versions_ok(host: str, port: int) -> bool:
    """Whether a Kafka broker answers ``ApiVersions`` (v0) with no error."""
    client_id = b"tenantry-devstack"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            (size,) = struct.unpack(">i", header)
            payload = b""
            while len(payload) < min(size, 6):
                chunk = sock.recv(size - len(payload))
                if not chunk:
                    return False
                payload += chunk
            correlation, error = struct.unpack(">ih", payload[:6])
            return bool(correlation == 1 and error == 0)
    except OSError:
        return False


def cluster_id() -> str:
    """A new cluster id: a random UUID in URL-safe base64 without padding, never starting
    with ``-`` (the storage tool would read such an id as an option), as Kafka's own
    ``Uuid.randomUuid`` guarantees."""
    while True:
        encoded = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not encoded.startswith("-"):
            return encoded


@dataclass(frozen=True, slots=True)
class KafkaService:
    """One single-node KRaft broker: its data folder, client and controller ports.

    ``dist_dir`` holds the fetched jars and may be shared between brokers (the tests start
    a private broker beside the shared one to kill and restart it).
    """

    data_dir: Path
    port: int = 19092
    controller_port: int | None = None
    dist_dir: Path | None = None
    host: str = "127.0.0.1"
    heap: str = "512m"

    @property
    def url(self) -> str:
        """The bootstrap servers string (``host:port``)."""
        return f"{self.host}:{self.port}"

    @property
    def bootstrap_servers(self) -> str:
        """Same as :attr:`url`: what a Kafka client's ``bootstrap.servers`` takes."""
        return self.url

    @property
    def _controller_port(self) -> int:
        return self.controller_port or self.port + 1

    @property
    def _libs(self) -> Path:
        dist = self.dist_dir or self.data_dir.parent / "kafka-dist"
        return dist / f"{SCALA_VERSION}-{KAFKA_VERSION}" / "libs"

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def _logfile(self) -> Path:
        return self.data_dir / "server.log"

    def fetch(self) -> Path:
        """Resolve the broker's jars from Maven Central (once); returns the libs folder."""
        libs = self._libs
        marker = libs / ".complete"
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("Maven (mvn) is needed to fetch the Kafka broker's jars")
        libs.mkdir(parents=True, exist_ok=True)
        pom = libs.parent / "pom.xml"
        pom.write_text(_POM.format(scala=SCALA_VERSION, kafka=KAFKA_VERSION, slf4j=SLF4J_SIMPLE))
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not any(libs.glob(f"kafka_{SCALA_VERSION}-*.jar")):
            raise ServiceError(
                f"could not fetch Apache Kafka {KAFKA_VERSION} from Maven Central:\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )
        marker.touch()
        return libs

    def _java_command(self, main: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp",
            str(self._libs / "*"),
            main,
            *args,
        ]

    def _format(self, properties: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        result = subprocess.run(
            self._java_command(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id(),
                "-c",
                str(properties),
            ),
            check=False,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-3000:]}"
            )

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker and wait until it answers; a no-op when it already does."""
        if self.is_running():
            return
        self.fetch()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = self.data_dir / "server.properties"
        properties.write_text(
            _SERVER_PROPERTIES.format(
                host=self.host,
                port=self.port,
                controller_port=self._controller_port,
                log_dir=self.data_dir / "logs",
            )
        )
        self._format(properties)
        with self._logfile.open("ab") as log:
            process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(properties)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        self._pidfile.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if api_versions_ok(self.host, self.port):
                return
            if process.poll() is not None:
                break
            time.sleep(0.2)
        tail = self._logfile.read_text(errors="replace")[-3000:]
        if process.poll() is None:
            process.kill()
        raise ServiceError(
            f"Kafka did not answer on {self.url} within {timeout:.0f} s (log {self._logfile}):\n"
            f"{tail}"
        )

    def _pid(self) -> int | None:
        try:
            return int(self._pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully (SIGTERM, then SIGKILL after ``timeout``)."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: for fault tests."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, signum: signal.Signals, timeout: float) -> None:
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            self._pidfile.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # Reap it if it is our child (tests), else just probe.
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    break
            except ChildProcessError:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.1)
        else:
            if signum != signal.SIGKILL:
                self._signal_and_wait(signal.SIGKILL, 10.0)
                return
            raise ServiceError(f"Kafka (pid {pid}) did not stop within {timeout:.0f} s")
        self._pidfile.unlink(missing_ok=True)

    def is_running(self) -> bool:
        """Whether a broker answers on the client port."""
        return api_versions_ok(self.host, self.port)
