"""Issue 15: a ``postgresql://`` MLFLOW_TRACKING_URI works for `vigil serve` (SQLAlchemy 2.1's
default driver for it is psycopg 3: it used to crash with "No module named 'psycopg'"), and the
URI's password never reaches the output. Real PostgreSQL on 127.0.0.1:5432, a fresh database."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.postgres

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PASSWORD = "s3cr3t-pg-password"


@pytest.fixture()
def fresh_database():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"vigil_mlflow_{secrets.token_hex(4)}"
    try:
        admin = psycopg2.connect(ADMIN_URL)
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {error}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_serve_reaches_a_postgresql_registry_and_never_prints_its_password(fresh_database, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=fresh_database)
    done = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "serve", "--model-uri", "models:/absent@champion"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "psycopg" not in output and "No module named" not in output
    assert "absent" in output  # it reached the registry: the model is what is missing
    assert PASSWORD not in output
