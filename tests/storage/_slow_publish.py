"""Child process for the kill-mid-publish test: publishes SRC to URI, announcing each uploaded file on stdout
and pausing after it, so the parent can SIGKILL it half-way through. Run: python -m tests.storage._slow_publish."""

from __future__ import annotations

import sys
import time

from firm.storage import LocalStore, S3Store, publish_dir


def _slow(cls: type) -> None:
    original = cls.put_file

    def put_file(self, key, path, on_bytes=None):  # type: ignore[no-untyped-def]
        original(self, key, path, on_bytes)
        print(f"uploaded {key}", flush=True)
        time.sleep(0.5)  # leaves the parent seconds of slack to kill us half-way

    cls.put_file = put_file


if __name__ == "__main__":
    _slow(LocalStore)
    _slow(S3Store)
    publish_dir(sys.argv[1], sys.argv[2], producer="doomed", workers=2)
    print("published", flush=True)
