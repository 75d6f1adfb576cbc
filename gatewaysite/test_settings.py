"""Settings for the test suite: the base settings with fixed secrets and a scratch data dir.

End-to-end tests start real gateway processes with the base settings and their own
environment; this module only serves the in-process tests (pytest-django).
"""

import os
import tempfile

os.environ.setdefault("GATEWAY_DATA_DIR", tempfile.mkdtemp(prefix="gateway-test-"))
os.environ.setdefault("GATEWAY_JWT_SECRET", "test-jwt-secret-0123456789abcdef0123456789")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-django-secret-0123456789abcdef0123456789")
os.environ.setdefault("GATEWAY_NODE_ID", "test-node")

from gatewaysite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
