"""A control plane settling an AutoML registration that stops for good right after the
registry committed the version, before its settling transaction: run as
``python -m tests.services.automl_settle_crash DB_URL HOME JOB_ID MARKER``; it writes MARKER
there and waits for the SIGKILL the test sends."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nimbus.db.engine import Database
from nimbus.security import Principal
from nimbus.services.automl_register import AutomlRegistrations
from nimbus.services.models import ModelService, RegisterResult
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store
from nimbus.wire.cards import CardText


def main(db_url: str, home: Path, job_id: str, marker: Path) -> None:
    db = Database(db_url)
    blobs = BlobStore(open_object_store(f"file://{home / 'blobs'}"), home / "staging")
    models = ModelService(db, blobs, tmp_dir=home / "tmp")

    def register_then_hang(
        who: Principal, name: str, job: str, card: CardText | None
    ) -> RegisterResult:
        done = models.register(who, name, job, card)  # committed
        marker.write_text(str(done.version.version))
        time.sleep(120)  # the SIGKILL lands here
        return done

    AutomlRegistrations(db, register_then_hang).settle_one(job_id)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
