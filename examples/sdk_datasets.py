"""Upload the bundled digits through the Python SDK and read the version back.

Run against a server you started (``nimbus server``) with a token in NIMBUS_TOKEN, or after
``nimbus login``::

    python examples/sdk_datasets.py [DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nimbus.client import Client
from nimbus.demo_data import write_digits_zip


def main(workdir: Path) -> None:
    data = write_digits_zip(workdir / "digits.zip")
    with Client() as client:  # NIMBUS_URL / NIMBUS_TOKEN, else the saved login
        version = client.upload_dataset("digits", data.path)
        print(f"uploaded {data.count} images as digits:{version.version}")
        for split, info in version.splits.items():
            print(f"  {split:<5} {info.size:>5} examples")
        files = client.download_dataset(f"digits:{version.version}", workdir / "download")
        print("downloaded", ", ".join(path.name for path in files))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
