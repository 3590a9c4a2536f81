"""Real middleway processes for the tests (clients/test.sh sets MW_BIN,
DATABASE_URL, REDIS_URL and MW_MYSQL_ARGS), and the fenced toy store."""

import os
import secrets
import signal
import socket
import subprocess
import time

import httpx
import pytest

KEY = "client-tests-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, **env: str) -> None:
        port, admin = free_port(), free_port()
        tls = "TLS_CERT_FILE" in env
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [os.environ["MW_BIN"], "serve"],
            env={
                **os.environ,
                "BIND_ADDR": f"127.0.0.1:{port}",
                "ADMIN_BIND_ADDR": f"127.0.0.1:{admin}",
                "API_KEYS": f"clients:{KEY}",
                "REDIS_KEY_PREFIX": f"mwclients:{secrets.token_hex(4)}:",
                "RUST_LOG": "warn",
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                # The test's own CA is not checked here: only whether it serves.
                if httpx.get(f"{self.url}/readyz", verify=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def service():
    started = Service()
    yield started
    started.stop()


@pytest.fixture
def start_service():
    started = []

    def start(**env: str) -> Service:
        started.append(Service(**env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def make_certificates(directory) -> dict:
    """A CA and a certificate it signed for 127.0.0.1 (openssl), in ``directory``."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=middleway client test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext.cnf", "-out", "server.pem")
    return {"ca": str(directory / "ca.pem"), "cert": str(directory / "server.pem"),
            "key": str(directory / "server.key")}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def sql(statement: str) -> str:
    args = os.environ["MW_MYSQL_ARGS"].split()
    return subprocess.run(["mariadb", *args, "-e", statement], check=True, capture_output=True, text=True).stdout.strip()


def fenced_write(key: str, fence: int, value: str) -> bool:
    """The fenced toy store: a write lands only with a fence above the last one it took."""
    sql("CREATE TABLE IF NOT EXISTS fenced_store (k VARCHAR(64) PRIMARY KEY, fence BIGINT UNSIGNED NOT NULL,"
        " value VARCHAR(64) NOT NULL)")
    sql(f"INSERT IGNORE INTO fenced_store VALUES ('{key}', 0, '')")
    changed = sql(f"UPDATE fenced_store SET value = '{value}', fence = {fence} WHERE k = '{key}' AND fence < {fence};"
                  " SELECT ROW_COUNT()")
    return changed == "1"


def stored_value(key: str) -> str:
    return sql(f"SELECT value FROM fenced_store WHERE k = '{key}'")
