"""dcmtk's storescp standing in for a PACS: started on a port, stopped by its own pid."""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pydicom

from tests.conftest import require_tool


class StoreSCP:
    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder = folder
        self.port = port
        self.ae_title = ae_title
        self.process: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        exe = require_tool("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        # +uf: a unique file per received instance, so a duplicate delivery shows as a second file.
        self.process = subprocess.Popen(
            [exe, "-aet", self.ae_title, "-od", str(self.folder), "+uf", "-pm", "+xa", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"storescp exited with {self.process.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("storescp did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def received(self) -> list[pydicom.Dataset]:
        return [
            pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(self.folder.iterdir()) if p.is_file()
        ]

    def sop_instances(self) -> Counter:
        """SOP Instance UID -> how many times it arrived."""
        return Counter(str(ds.SOPInstanceUID) for ds in self.received())

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[pydicom.Dataset]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            files = [p for p in self.folder.iterdir() if p.is_file()]
            if len(files) >= count:
                time.sleep(0.2)  # storescp writes the file before it answers; let it finish
                return self.received()
            time.sleep(0.1)
        return self.received()
