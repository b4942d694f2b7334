"""`python -m vm_worker`: run one batch worker until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from nimbus.config import Settings
from nimbus.errors import ConfigError
from nimbus.logs import configure_logging
from vm_worker.worker import Worker


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"vm_worker: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    worker = Worker.from_settings(settings)

    def drain(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
