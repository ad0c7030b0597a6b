"""The tuner as a service: an HTTP app over the stored runs (`create_app`, what `tuner serve`
runs on uvicorn). A layer above the public API, beside the command line: it calls `import tuner`
and nothing below it."""

from __future__ import annotations

from tuner.service.app import check_binding
from tuner.service.app import create_app

__all__ = ["check_binding", "create_app"]
