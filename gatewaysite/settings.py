"""Django settings for the gateway.

Every value a deployment changes comes from the environment through ``gateway_core.env``.
The plain GATEWAY_* settings come from the settings table (``gatewaysite/settings_table.py``),
which also generates the README's configuration rows; what needs computing (data dir,
secrets, node id, database, channel layers, logging, Django's own) is written out here.
Code reads these settings at use time through ``gateway_core.conf``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url

from gateway_core import env, logs
from gateway_node import origins
from gatewaysite import settings_table

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env.data_dir()
_secrets = env.load_secrets(DATA_DIR)

SECRET_KEY = _secrets.django_secret_key
DEBUG = env.flag("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.csv("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# HTTPS (docs/security.md). Off by default: the embedded default serves plain
# http://127.0.0.1. DJANGO_HTTPS=on says the public URL is https, with TLS terminated by a
# reverse proxy in front of the node (rungateway speaks plain HTTP): cookies become
# secure-only and plain HTTP is redirected, except the endpoints that probes and scrapers
# reach on the node's own port. The proxy must set X-Forwarded-Proto (overwriting any the
# client sent): it is how the node tells that a request came over TLS.
HTTPS = env.flag("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# HSTS: off until the operator is sure every client reaches the host over HTTPS (browsers
# then refuse plain HTTP to it for that long; it cannot be taken back early).
SECURE_HSTS_SECONDS = env.integer("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
# Covers subdomains of the gateway's own host name, which a gateway rarely has.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SILENCED_SYSTEM_CHECKS = [
    # "SECURE_HSTS_PRELOAD is not set": the browsers' preload list takes registrable
    # domains; a gateway is normally one host name under its owner's domain, whose
    # preloading is the domain owner's decision, not this service's.
    "security.W021",
]

INSTALLED_APPS = [
    "daphne",
    # Django's admin with the operator console as its site (console/admin_site.py).
    "console.apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Admin login lockout (docs/security.md): failed logins stored in the database.
    "axes",
    "sessions_app",
    "push_app",
    "monitoring",
    # Webhooks: endpoints, the outbox and its sender (above both apps).
    "webhooks",
    # The operator console (its admin site is the one above) and prunegateway.
    "console",
    # The runtime: the node, its servers, rungateway and runconsumer.
    "gateway_node",
]

MIDDLEWARE = [
    # Outermost: counts the API's 4xx answers no view counted (413, bad Host, unknown path).
    "push_app.api.middleware.RejectionCountMiddleware",
    # Then: answers a bad Host before any other middleware asks for it, and keeps every
    # answer under /api/ JSON, whichever middleware or view made it.
    "gateway_core.middleware.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "gateway_core.middleware.ChunkedBodyLengthMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns its lockout into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "gatewaysite.urls"
ASGI_APPLICATION = "gatewaysite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env.text("DATABASE_URL", f"sqlite:///{DATA_DIR / 'gateway.sqlite3'}"),
        conn_max_age=600,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if DATABASES["default"]["NAME"] and str(DATABASES["default"]["NAME"]) != ":memory:":
        # 0600 before sqlite first opens it; its -wal and -shm files inherit that mode.
        env.private_file(Path(DATABASES["default"]["NAME"]))
    # WAL lets the admin read while the node writes its batches; IMMEDIATE transactions
    # wait (up to the timeout) for the write lock instead of failing at once with
    # "database is locked" when a read turns into a write.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes' backend first: it refuses a locked-out username+address before any password
# is checked (docs/security.md).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Locked per username and address together: per address alone, anyone could lock every
# operator out; per username alone, one attacker could lock out a named operator everywhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env.integer("GATEWAY_ADMIN_LOGIN_FAILURES", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env.integer("GATEWAY_ADMIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
# The address is the peer's (REMOTE_ADDR, the ASGI scope's client; django-ipware is not
# installed): X-Forwarded-For is whatever the client wrote unless a trusted proxy wrote it.
# Successful logins are not logged to the database (the failures are what the lockout needs).
AXES_DISABLE_ACCESS_LOG = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The console's one time format (seconds and timezone) on every admin page.
FORMAT_MODULE_PATH = ["console.formats"]

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve admin and demo assets straight from the apps, even with DEBUG off, without a
# collectstatic step on a fresh machine.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Channels --------------------------------------------------------------------------
GATEWAY_NODE_ID = env.node_id()
REDIS_URL = env.text("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # One prefix per node: a node's web and consumer processes share a layer,
            # nodes never see each other's traffic through it.
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout, which races channels_redis'
                # 5 s BZPOPMIN and fails every idle receive: give reads 15 s.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": f"gateway:{GATEWAY_NODE_ID}:",
                "capacity": 10_000,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- REST framework --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["push_app.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["push_app.api.authentication.IsApiClient"],
    "DEFAULT_PARSER_CLASSES": ["push_app.api.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["push_app.api.throttling.ApiClientRateThrottle"],
    "EXCEPTION_HANDLER": "push_app.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Push gateway API",
    "DESCRIPTION": "Push JSON to users' WebSocket connections. Contract: PROTOCOL.md v1.",
    "VERSION": "1",
    # The request and response bodies, exactly as push_app.validation checks them
    # (push_app/api/schema.py), after drf-spectacular's own enum hook.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "push_app.api.schema.fill_components",
        "webhooks.api.schema.require_bodies",
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI's assets come from the sidecar package, not a CDN: /api/docs/ works on
    # machines without internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Gateway and monitoring: the settings table (gatewaysite/settings_table.py) -----------
# Every plain GATEWAY_* setting is one row of the table, declared in gateway_core/conf.py
# or monitoring/conf.py: its variable, its Django setting, its type and default.
GATEWAY_JWT_SECRET = _secrets.jwt_secret
_table_settings = settings_table.TABLE.django_settings()
globals().update(_table_settings)

# The request body limit is enforced by the API's parser with a 413; Django's own check
# would answer 400 first, so it is raised above ours.
DATA_UPLOAD_MAX_MEMORY_SIZE = _table_settings["GATEWAY_MAX_REQUEST_BYTES"] + 1024 * 1024
# Browser origins: parsed here once so that a typo stops the node at start instead of
# refusing every browser.
origins.parse(_table_settings["GATEWAY_ALLOWED_ORIGINS"])
# Mail for GATEWAY_ALERT_EMAIL=on (Django's mail_admins): recipients and SMTP server.
ADMINS = [("", address) for address in env.csv("DJANGO_ADMINS", "")]
SERVER_EMAIL = env.text("DJANGO_SERVER_EMAIL", "gateway@localhost")
EMAIL_HOST = env.text("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env.integer("DJANGO_EMAIL_PORT", 25, minimum=1)

LOG_LEVEL = env.text("GATEWAY_LOG_LEVEL", "INFO")
# `plain` (default) or `json`: one JSON object per line with node, session and push ids.
LOG_FORMAT = env.text("GATEWAY_LOG_FORMAT", "plain")
LOGGING = logs.logging_config(node_id=GATEWAY_NODE_ID, level=LOG_LEVEL, log_format=LOG_FORMAT)
