"""Start real Kafka (KRaft), Redis and Prometheus servers for integration tests.

Plain Python (no pytest): every ``start_*`` function picks free loopback ports,
works in a fresh temp dir, waits until the server really answers and returns a
handle with ``.port`` / ``.url`` (``.bootstrap`` for Kafka) and ``.stop()``.
A missing binary (or Kafka jar cache) triggers the matching
``deploy/scripts/install-*.sh`` once, so a fresh machine works.  Startup
failures raise :class:`ServerStartError` including the tail of the server log.

Environment knobs: ``NUDGE_CACHE`` (jar cache root, see install-kafka.sh),
``NUDGE_KAFKA_LIBS`` (use this jar dir as is), ``NUDGE_KEEP_SERVER_DIRS=1``
(keep temp dirs after stop, for debugging).
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

__all__ = [
    "KafkaServer",
    "PrometheusServer",
    "RedisServer",
    "ServerStartError",
    "free_port",
    "kafka_partition_leaders",
    "start_kafka",
    "start_prometheus",
    "start_redis",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "deploy" / "scripts"
HOST = "127.0.0.1"
_LIVE: set[_ManagedProcess] = set()
_INSTALL_LOCK = threading.Lock()
_LOG4J2 = (
    "status = warn\n"
    "appender.console.type = Console\n"
    "appender.console.name = STDOUT\n"
    "appender.console.layout.type = PatternLayout\n"
    "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
    "rootLogger.level = INFO\n"
    "rootLogger.appenderRef.stdout.ref = STDOUT\n"
    "logger.cfg.name = org.apache.kafka.common.config.AbstractConfig\n"
    "logger.cfg.level = WARN\n"
)
# Single-node KRaft, tuned for tests: RF 1 everywhere, few partitions, no rebalance delay.
_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
log.cleaner.enable=true
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.io.buffer.size=524288
log.cleaner.backoff.ms=1000"""


class ServerStartError(RuntimeError):
    """A test server could not be installed or did not become ready in time."""


def free_port() -> int:
    """Return a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` of a log, preceded by its first ERROR/FATAL lines (often scrolled off)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    errors = [ln for ln in text[:-lines] if " ERROR " in ln or " FATAL " in ln][:10]
    head = ["--- first errors ---", *errors, "--- tail ---"] if errors else []
    return "\n".join(head + text[-lines:])


def _run_install(script: str) -> str:
    """Run ``deploy/scripts/<script>`` once (serialised) and return its stdout."""
    with _INSTALL_LOCK:
        logger.info("running %s", script)
        proc = subprocess.run(
            ["bash", str(SCRIPTS_DIR / script)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    if proc.returncode != 0:
        raise ServerStartError(f"{script} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip()


def _require_binary(name: str, script: str) -> str:
    found = shutil.which(name)
    if found is None:
        _run_install(script)
        found = shutil.which(name)
    if found is None:
        raise ServerStartError(f"{name} still not on PATH after running {script}")
    return found


class _ManagedProcess:
    """One server subprocess in its own temp dir; logs go to ``log_path``."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, argv: list[str], cwd: Path | None = None) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            argv,
            cwd=cwd or self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C on pytest does not hit it first
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _fail(self, reason: str) -> ServerStartError:
        tail = _tail(self.log_path)
        self._terminate(timeout=5.0)
        return ServerStartError(f"{self.name}: {reason}\n--- tail of {self.log_path} ---\n{tail}")

    def _wait_ready(self, probe_timeout: float, deadline_s: float) -> None:
        """Poll ``self._ready()`` until true; raise with the log tail on death/timeout."""
        deadline = time.monotonic() + deadline_s
        last_error = "no probe yet"
        while time.monotonic() < deadline:
            if not self.alive():
                code = None if self._proc is None else self._proc.returncode
                raise self._fail(f"process exited with code {code} during startup")
            try:
                if self._ready(probe_timeout):
                    return
                last_error = "not ready yet"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise self._fail(f"not ready after {deadline_s:.0f}s (last probe: {last_error})")

    def _ready(self, timeout: float) -> bool:
        raise NotImplementedError

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s pid %d ignored SIGTERM, killing", self.name, proc.pid)
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir."""
        self._terminate(timeout)
        if not os.environ.get("NUDGE_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop(timeout=5.0)


# --------------------------------------------------------------------------- Kafka


def _kafka_request(port: int, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    """Send one request (header v1) and return the response body after the correlation id."""
    client_id = b"nudge-tests"
    header = struct.pack(">hhih", api_key, version, 1, len(client_id)) + client_id
    payload = header + body
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        raw = b""
        while len(raw) < 4 or len(raw) < 4 + struct.unpack(">i", raw[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            raw += chunk
    return raw[8:]  # size + correlation id


def kafka_partition_leaders(
    port: int, topics: list[str] | None = None, timeout: float = 2.0
) -> tuple[int, dict[str, dict[int, int]]]:
    """Metadata v4 probe: ``(live broker count, {topic: {partition: leader id}})``.

    ``topics=None`` asks for all topics.  Leader ``-1`` means no leader yet; a
    topic with a non-zero error code (e.g. unknown) maps to ``{}``.
    """
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics))
        for topic in topics:
            body += struct.pack(">h", len(topic.encode())) + topic.encode()
    data = _kafka_request(port, 3, 4, body + b"\x00", timeout)
    pos = 4  # throttle_time_ms

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def skip_string() -> str:
        nonlocal pos
        size = take(">h")
        text = "" if size < 0 else data[pos : pos + size].decode()
        pos += max(size, 0)
        return text

    brokers = take(">i")
    for _ in range(brokers):
        take(">i")  # node id
        skip_string()  # host
        take(">i")  # port
        skip_string()  # rack
    skip_string()  # cluster id
    take(">i")  # controller id
    result: dict[str, dict[int, int]] = {}
    for _ in range(take(">i")):
        error = take(">h")
        name = skip_string()
        take(">b")  # is_internal
        leaders: dict[int, int] = {}
        for _ in range(take(">i")):
            take(">h")  # partition error
            index, leader = take(">i"), take(">i")
            leaders[index] = leader
            for _array in ("replicas", "isr"):
                count = take(">i")  # read first: `pos += take()` would use the stale pos
                pos += 4 * count
        result[name] = {} if error else leaders
    return brokers, result


def _kafka_libs() -> Path:
    override = os.environ.get("NUDGE_KAFKA_LIBS")
    if override:
        return Path(override)
    cache = Path(os.environ.get("NUDGE_CACHE", str(Path.home() / ".cache" / "nudge")))
    libs = cache / "kafka" / "libs"
    if not (libs / ".complete").exists() or not any(libs.glob("kafka_2.13-*.jar")):
        libs = Path(_run_install("install-kafka.sh").splitlines()[-1])
    return libs


class KafkaServer(_ManagedProcess):
    """Single-node KRaft Kafka (combined broker + controller) on 127.0.0.1."""

    name = "kafka"

    def __init__(self, workdir: Path, port: int, controller_port: int, libs: Path) -> None:
        super().__init__(workdir)
        self.port = port
        self.controller_port = controller_port
        self.libs = libs
        self.bootstrap = f"{HOST}:{port}"
        self.url = f"kafka://{self.bootstrap}"  # faust broker URL form
        self.version = next(libs.glob("kafka_2.13-*.jar")).stem.removeprefix("kafka_2.13-")

    def _ready(self, timeout: float) -> bool:
        brokers, _ = kafka_partition_leaders(self.port, [], timeout)
        return brokers > 0

    def wait_for_leaders(self, topics: list[str], timeout: float = 30.0) -> None:
        """Block until every partition of ``topics`` has a leader (after creating them)."""
        deadline = time.monotonic() + timeout
        state: dict[str, dict[int, int]] = {}
        while time.monotonic() < deadline:
            _, state = kafka_partition_leaders(self.port, topics)
            if all(state.get(t) and min(state[t].values()) >= 0 for t in topics):
                return
            time.sleep(0.05)
        raise TimeoutError(f"no leaders for {topics} after {timeout}s: {state}")


def start_kafka(
    extra_properties: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    heap: str = "512m",
) -> KafkaServer:
    """Format a KRaft log dir and start a broker; returns once Metadata lists it."""
    java = shutil.which("java")
    if java is None:
        raise ServerStartError("java not found on PATH (need Java 17+ for Kafka 4.x)")
    libs = _kafka_libs()
    workdir = Path(tempfile.mkdtemp(prefix="nudge-kafka-"))
    server = KafkaServer(workdir, free_port(), free_port(), libs)
    props = dict(
        line.split("=", 1)
        for line in _KAFKA_PROPERTIES.format(
            host=HOST, port=server.port, cport=server.controller_port, data=workdir / "data"
        ).splitlines()
    )
    props.update(extra_properties or {})
    config = workdir / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (workdir / "log4j2.properties").write_text(_LOG4J2)
    log4j = f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}"
    jvm = [java, f"-Xmx{heap}", "-Xms128m", "-XX:+UseSerialGC", log4j, "-cp", f"{libs}/*"]
    # a cluster id starting with "-" is read by the storage tool as an option (seen once):
    # draw again, as Kafka's own random-uuid does
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    fmt = subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if fmt.returncode != 0:
        raise ServerStartError(
            f"kafka StorageTool format failed:\n{fmt.stdout[-3000:]}{fmt.stderr[-3000:]}"
        )
    started = time.monotonic()
    server._spawn([*jvm, "kafka.Kafka", str(config)])
    server._wait_ready(probe_timeout=2.0, deadline_s=timeout)
    took = time.monotonic() - started
    logger.info("kafka %s ready at %s in %.1fs", server.version, server.bootstrap, took)
    return server


# --------------------------------------------------------------------------- Redis


class RedisServer(_ManagedProcess):
    """redis-server on 127.0.0.1 without persistence; ``restart()`` keeps the port."""

    name = "redis"

    def __init__(self, workdir: Path, port: int, binary: str) -> None:
        super().__init__(workdir)
        self.port = port
        self.host = HOST
        self.binary = binary
        self.url = f"redis://{HOST}:{port}/0"

    def _ready(self, timeout: float) -> bool:
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def start(self, timeout: float = 20.0) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.workdir)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
        self._spawn(argv)
        self._wait_ready(probe_timeout=1.0, deadline_s=timeout)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self._terminate(timeout=10.0)
        self.start(timeout)


def start_redis(timeout: float = 20.0) -> RedisServer:
    """Start redis-server on a free port; returns once it answers PING."""
    binary = _require_binary("redis-server", "install-redis.sh")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="nudge-redis-")), free_port(), binary)
    started = time.monotonic()
    server.start(timeout)
    logger.info("redis ready at %s in %.2fs", server.url, time.monotonic() - started)
    return server


# --------------------------------------------------------------------------- Prometheus


class PrometheusServer(_ManagedProcess):
    """Prometheus with a given config; ``url`` is the HTTP base (API under /api/v1)."""

    name = "prometheus"

    def __init__(self, workdir: Path, port: int, binary: str) -> None:
        super().__init__(workdir)
        self.port = port
        self.binary = binary
        self.url = f"http://{HOST}:{port}"
        self.config_path = workdir / "prometheus.yml"

    def _ready(self, timeout: float) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=timeout) as resp:
                return int(resp.status) == 200
        except urllib.error.HTTPError:  # 503 while starting
            return False


def start_prometheus(
    config_text: str, port: int | None = None, timeout: float = 30.0
) -> PrometheusServer:
    """Start prometheus with ``config_text`` as prometheus.yml; waits for ``/-/ready``.

    Pass ``port`` (e.g. from :func:`free_port`) when the config must know it,
    such as a job scraping Prometheus itself.
    """
    binary = _require_binary("prometheus", "install-prometheus.sh")
    workdir = Path(tempfile.mkdtemp(prefix="nudge-prometheus-"))
    server = PrometheusServer(workdir, port or free_port(), binary)
    server.config_path.write_text(config_text)
    argv = [
        binary,
        f"--config.file={server.config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={HOST}:{server.port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    started = time.monotonic()
    server._spawn(argv)
    server._wait_ready(probe_timeout=1.0, deadline_s=timeout)
    logger.info("prometheus ready at %s in %.2fs", server.url, time.monotonic() - started)
    return server
