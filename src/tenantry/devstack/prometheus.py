"""A real Prometheus server (Debian's ``prometheus`` package), run on loopback.

The server runs from our own folder: our configuration (scrape and rule-evaluation every
second, scrape targets from ``targets/*.json`` via file discovery, rules from
``rules/*.yml``), our TSDB directory, a loopback port, and ``--web.enable-lifecycle`` so a
test can ``POST /-/reload`` after writing rules. The package's own service is never
started. When ``/usr/bin/prometheus`` is missing, :meth:`PrometheusService.start` installs
the package with apt-get (CI and fresh machines run as root); if that fails, it is an
error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tenantry.devstack.errors import ServiceError, pidfile_alive, stop_by_pidfile

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}/*.yml
scrape_configs:
  - job_name: tenantry
    file_sd_configs:
      - files: ['{targets}/*.json']
        refresh_interval: 1s
"""


def ensure_installed() -> None:
    """Install Debian's ``prometheus`` package (server + promtool) if it is missing."""
    if Path(PROMETHEUS).exists() and Path(PROMTOOL).exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise ServiceError("prometheus is not installed and apt-get is not available")
    # RUNLEVEL=1: invoke-rc.d does not start the package's own service during the install.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    for args in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"],
    ):
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    if not Path(PROMETHEUS).exists():
        raise ServiceError("the prometheus package installed no /usr/bin/prometheus")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class PrometheusService:
    """One Prometheus server: its folder (config, rules, targets, data) and port."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def rules_dir(self) -> Path:
        """Where rule files (``*.yml``) are read from; ``POST /-/reload`` after writing."""
        return self.data_dir / "rules"

    @property
    def targets_dir(self) -> Path:
        """Where file-discovery target lists (``*.json``) are read from (picked up live)."""
        return self.data_dir / "targets"

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "prometheus.pid"

    def start(self) -> None:
        """Start the server (installing it first if needed); a no-op when it runs.

        A server on the port that this folder did not start is refused, not reused: it
        reads its rules and targets from another folder, so what is written here would
        never reach it (a checkout deleted while its Prometheus ran leaves one behind).
        """
        if self.is_running():
            if pidfile_alive(self._pidfile):
                return
            raise ServiceError(
                f"a Prometheus not started from {self.data_dir} already answers on "
                f"{self.url}; stop it (or choose another port) and start again"
            )
        ensure_installed()
        for folder in (self.data_dir, self.rules_dir, self.targets_dir, self.data_dir / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(CONFIG.format(rules=self.rules_dir, targets=self.targets_dir))
        log = (self.data_dir / "prometheus.log").open("ab")
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._pidfile.write_text(str(process.pid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _ready(self.url):
                return
            if process.poll() is not None:
                break
            time.sleep(0.1)
        tail = (self.data_dir / "prometheus.log").read_text(errors="replace")[-2000:]
        raise ServiceError(f"Prometheus did not become ready on {self.url}:\n{tail}")

    def reload(self) -> None:
        """Re-read configuration and rule files (``POST /-/reload``)."""
        request = urllib.request.Request(self.url + "/-/reload", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our URL
            if response.status != 200:
                raise ServiceError(f"Prometheus reload answered {response.status}")

    def stop(self) -> None:
        """Stop the server gracefully; a no-op when it is not running."""
        stop_by_pidfile(self._pidfile, "Prometheus", 20)

    def is_running(self) -> bool:
        """Whether the server answers ``/-/ready``."""
        return _ready(self.url)
