"""Child processes of the benchmark: one-shot runs that answer one JSON line, and services.

Receivers, servers and overload runs live in their own interpreters so they neither share the GIL
with the code being measured nor inherit its peak memory (``ru_maxrss`` only ever grows).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from types import TracebackType
from typing import IO, Any

READY = "READY"


def _tail(stream: IO[bytes], chars: int = 2000) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", "replace")[-chars:].strip()


def run_child(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m module *args`` to completion; its last stdout line is a JSON object.

    Raises:
        RuntimeError: the child failed, timed out or printed no JSON (the message carries its stderr).
    """
    command = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"bench child {' '.join(command[2:])}: no answer within {timeout:.0f}s") from exc
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"bench child {' '.join(command[2:])} exited {proc.returncode}: {_tail(err)}")
        try:
            answer = json.loads(lines[-1])
        except ValueError as exc:
            raise RuntimeError(f"bench child {' '.join(command[2:])} printed no JSON: {lines[-1][:200]!r}") from exc
    if not isinstance(answer, dict):
        raise RuntimeError(f"bench child {' '.join(command[2:])} answered {type(answer).__name__}, not an object")
    return answer


class Service:
    """``python -m module *args`` that prints ``READY <address>`` and serves until its stdin closes."""

    def __init__(self, module: str, args: list[str], *, timeout: float = 30.0) -> None:
        self.command = [sys.executable, "-m", module, *args]
        self.timeout = timeout
        self.address = ""
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self._proc = proc
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else b""))
        reader.start()
        reader.join(self.timeout)
        text = line[0].decode("utf-8", "replace").strip() if line else ""
        if not text.startswith(READY + " "):
            detail = _tail(self._err)
            self.stop()
            raise RuntimeError(f"bench service {' '.join(self.command[2:])} did not start: {text!r} {detail}")
        self.address = text[len(READY) + 1 :]
        return self

    def stop(self) -> None:
        """Close its stdin (the signal to stop), wait, and kill it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.timeout)
        if proc.stdout:
            proc.stdout.close()
        self._err.close()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_until_stdin_closes(address: str) -> None:
    """Child side of :class:`Service`: announce ``address``, then block until the parent lets go."""
    print(f"{READY} {address}", flush=True)
    sys.stdin.read()
