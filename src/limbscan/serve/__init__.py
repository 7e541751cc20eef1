"""``limbscan serve``: a REST service (FastAPI) and a web page over one model bundle.

``create_app(model_or_bundle_path, token=...)`` builds the app; run it with uvicorn.
"""

from limbscan.serve.api import background_server, create_app

__all__ = ["background_server", "create_app"]
