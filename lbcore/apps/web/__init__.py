"""``lb serve``: a local web page for protecting photos, for people who do not use a terminal.

:func:`create_app` builds the Flask application (it calls :func:`lbcore.apps.protection.protect`, the
same API as ``lb protect``); :func:`make_server` binds it to a host and port with werkzeug's
WSGI server. Flask is imported only when this package is.
"""

from __future__ import annotations

from lbcore.apps.web.app import DEFAULT_MAX_UPLOAD_MB, create_app, is_loopback, make_server

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "create_app", "is_loopback", "make_server"]
