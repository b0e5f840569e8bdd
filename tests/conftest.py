"""Shared fixtures (tests/harness/fixtures.py) and the capability report header."""

from tests.harness.fixtures import libvirt_conn, make_vm, real_guest  # noqa: F401
from tests.harness.libvirtd import capabilities


def pytest_report_header() -> list[str]:
    return [f"vbbackup capabilities: {capabilities().summary()}"]
